# The debug command on a user's data (config `debug:`): one cross-fitting job per (seed, fold), one report job.


rule crossfit:
    output:
        run=directory(paths.CROSSFIT) if DEBUG and DEBUG["keep_runs"] else temp(directory(paths.CROSSFIT)),
    params:
        dataset=lambda w: w.dataset,
        spec=lambda w: config["datasets"][w.dataset] or {},
        data_dir=config["data_dir"],
        model=lambda w: w.model,
        settings=lambda w: cfg.train_settings(config, w.dataset, w.model),
        folds=lambda w: config["debug"]["folds"],
        seed=lambda w: int(w.seed),
        fold=lambda w: int(w.fold),
        clip=config["prepare"]["clip"],
        row_block=config["signals"]["row_block"],
        k_neighbours=config["signals"]["k_neighbours"],
        names=config["signals"]["names"],
        weighting=config["influence"]["weighting"],
        companions=lambda w: config["debug"]["companions"] if DEBUG and int(w.seed) == 0 else [],  # one partition
        pairwise=lambda w: int(w.seed) == 0,  # the pairwise influence signals from the first seed's runs only
        data=data_digest,
        code=stage_fingerprint("crossfit"),
    log:
        "results/logs/crossfit/{dataset}/{model}/s{seed}/f{fold}.log",
    benchmark:
        "results/benchmarks/crossfit/{dataset}/{model}/s{seed}/f{fold}.tsv"
    threads: threads_for("train")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"


rule debug_report:
    input:
        runs=debug_runs,
    output:
        **paths.DEBUG_OUTPUTS,
    params:
        dataset=config["debug"]["dataset"] if DEBUG else "",
        spec=config["datasets"][config["debug"]["dataset"]] if DEBUG else {},
        data_dir=config["data_dir"],
        model=config["debug"]["model"] if DEBUG else "",
        folds=config["debug"]["folds"] if DEBUG else 0,
        settings=cfg.train_settings(config, config["debug"]["dataset"], config["debug"]["model"]) if DEBUG else {},
        top=config["debug"]["top"] if DEBUG else 0.0,
        code=stage_fingerprint("debug_report"),
    log:
        "results/logs/debug_report.log",
    benchmark:
        "results/benchmarks/debug_report.tsv"
    threads: 1
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"
