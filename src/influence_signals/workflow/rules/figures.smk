# The study's figures and Table 1: each target asks only for the jobs of its own grid.


rule figure:
    input:
        metric_files=figure_inputs,
    output:
        figure_out=report("results/{figure}.pdf", caption="../report/figure.rst", category="Figures"),
    params:
        jobs=figure_jobs,
        kind=lambda w: figure_spec(w)["kind"],
        shown=lambda w: figure_spec(w).get("signals", config["plot_signals"]),
        title=lambda w: figure_spec(w).get("title", ""),
        caption=lambda w: figure_spec(w).get("caption", ""),
        code=stage_fingerprint("figure"),
    log:
        "results/logs/figures/{figure}.log",
    benchmark:
        "results/benchmarks/figures/{figure}.tsv"
    threads: 1
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"


rule table:
    input:
        accuracy_files=table_inputs,
    output:
        table_csv=report("results/{table}.csv", caption="../report/table.rst", category="Tables"),
        table_md="results/{table}.md",
    params:
        jobs=table_jobs,
        caption=lambda w: config["tables"][w.table].get("caption", ""),
        code=stage_fingerprint("table"),
    log:
        "results/logs/tables/{table}.log",
    benchmark:
        "results/benchmarks/tables/{table}.tsv"
    threads: 1
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"
