# The study's figures and Table 1: each target asks only for the jobs of its own grid.
from influence_signals.plots import FIGURE_KINDS


def figure_spec(wildcards):
    return config["figures"][wildcards.figure]


def figure_inputs(wildcards):
    per_job = FIGURE_KINDS[figure_spec(wildcards)["kind"]].per_job
    return run_paths(RUN + "/" + per_job, cfg.target_jobs(config, "figures", wildcards.figure))


rule figure:
    input:
        metric_files=figure_inputs,
    output:
        figure_out=report("results/{figure}.pdf", caption="../report/figure.rst", category="Figures"),
    params:
        jobs=lambda w: [job.wildcards for job in cfg.target_jobs(config, "figures", w.figure)],
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
        "../../envs/pipeline.yaml"
    script:
        "../scripts/figure.py"


rule table:
    input:
        accuracy_files=lambda w: run_paths(RUN + "/accuracy.csv", cfg.target_jobs(config, "tables", w.table)),
    output:
        table_csv=report("results/{table}.csv", caption="../report/table.rst", category="Tables"),
        table_md="results/{table}.md",
    params:
        jobs=lambda w: [job.wildcards for job in cfg.target_jobs(config, "tables", w.table)],
        caption=lambda w: config["tables"][w.table].get("caption", ""),
        code=stage_fingerprint("table"),
    log:
        "results/logs/tables/{table}.log",
    benchmark:
        "results/benchmarks/tables/{table}.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/table.py"
