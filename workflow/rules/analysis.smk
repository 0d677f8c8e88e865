# Analysis stages: signals per row, metrics per job, aggregates and figures over the grid.


rule signals:
    input:
        factors=RUN + "/influence",
        train_set=GLITCHED + "/train.npz",
    output:
        scores=RUN + "/scores.csv",
        per_epoch=RUN + "/per_epoch.npz",
    params:
        seed=lambda w: int(w.seed),
        row_block=config["signals"]["row_block"],
        col_block=config["signals"]["col_block"],
        k_neighbours=config["signals"]["k_neighbours"],
        use_baselines=config["signals"]["baselines"],
        names=config["signals"]["names"],
        device=config["device"],
        code=stage_fingerprint("compute_signals"),
    log:
        log_path("signals"),
    benchmark:
        benchmark_path("signals")
    threads: threads_for("signals")
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/signals.py"


rule evaluate:
    input:
        scores=RUN + "/scores.csv",
        per_epoch=RUN + "/per_epoch.npz",
        errors=GLITCHED + "/errors.csv",
        factors=RUN + "/influence",
        val_set=lambda w: data_path(w.dataset, w.seed, "val"),
    output:
        metrics_out=RUN + "/metrics.csv",
        epoch_metrics=RUN + "/epoch_metrics.csv",
        accuracy=RUN + "/accuracy.csv",
        curves=RUN + "/curves.csv",
    params:
        code=stage_fingerprint("evaluate"),
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/evaluate.py"


rule aggregate:
    input:
        metric_files=run_paths(RUN + "/metrics.csv"),
        accuracy_files=run_paths(RUN + "/accuracy.csv"),
    output:
        summary="results/summary.csv",
        accuracy_summary="results/accuracy_summary.csv",
        figure=report("results/summary.pdf", caption="../report/summary.rst", category="Overview"),
    params:
        jobs=[job.wildcards for job in JOBS],
        shown=config["plot_signals"],
        code=stage_fingerprint("aggregate"),
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/aggregate.py"
