# Analysis stages: signals and their metrics per job (one process), aggregates over the grid.


rule signals:
    input:
        unpack(signals_inputs),
    output:
        scores="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/scores.csv",
        per_epoch="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/per_epoch.npz",
        detections="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/detections.csv",
        metrics_out="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/metrics.csv",
        epoch_metrics="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/epoch_metrics.csv",
        accuracy="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/accuracy.csv",
        curves="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/curves.csv",
    params:
        seed=lambda w: int(w.seed),
        row_block=config["signals"]["row_block"],
        k_neighbours=config["signals"]["k_neighbours"],
        use_baselines=config["signals"]["baselines"],
        names=config["signals"]["names"],
        weighting=config["influence"]["weighting"],
        device=config["device"],
        code=stage_fingerprint("signals"),
    log:
        "results/logs/signals/{dataset}/{model}/{glitch}/r{ratio}/s{seed}.log",
    benchmark:
        "results/benchmarks/signals/{dataset}/{model}/{glitch}/r{ratio}/s{seed}.tsv"
    threads: threads_for("signals")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"


rule aggregate:
    input:
        metric_files=run_paths("metrics.csv"),
        accuracy_files=run_paths("accuracy.csv"),
    output:
        summary="results/summary.csv",
        accuracy_summary="results/accuracy_summary.csv",
        figure=report("results/summary.pdf", caption="../report/summary.rst", category="Overview"),
    params:
        jobs=[job.wildcards for job in JOBS],
        code=stage_fingerprint("aggregate"),
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    threads: 1
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"
