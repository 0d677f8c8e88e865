# Data stages: shared by every model that trains on the same data set, glitch, ratio and seed.


rule prepare:
    output:
        train="results/data/{dataset}/split{split}/train.npz",
        val="results/data/{dataset}/split{split}/val.npz",
        pool="results/data/{dataset}/split{split}/pool.npz",
    params:
        dataset=lambda w: w.dataset,
        spec=lambda w: config["datasets"][w.dataset] or {},
        data_dir=config["data_dir"],
        download=config["download"],
        fraction=config["prepare"]["fraction"],
        val_fraction=config["prepare"]["val_fraction"],
        clip=config["prepare"]["clip"],
        seed=lambda w: int(w.split),
        data=data_digest,
        code=stage_fingerprint("prepare"),
    log:
        "results/logs/prepare/{dataset}_split{split}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}_split{split}.tsv"
    threads: 1
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"


rule inject:
    input:
        unpack(inject_inputs),
    output:
        glitched_train="results/data/{dataset}/{glitch}/r{ratio}/s{seed}/train.npz",
        errors="results/data/{dataset}/{glitch}/r{ratio}/s{seed}/errors.csv",
    params:
        glitch=lambda w: w.glitch,
        ratio=lambda w: int(w.ratio),
        seed=lambda w: int(w.seed),
        options=lambda w: cfg.glitch_options(config, w.glitch),
        code=stage_fingerprint("inject"),
    log:
        "results/logs/inject/{dataset}_{glitch}_r{ratio}_s{seed}.log",
    benchmark:
        "results/benchmarks/inject/{dataset}_{glitch}_r{ratio}_s{seed}.tsv"
    threads: 1
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"
