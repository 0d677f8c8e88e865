# Model stages: pre-training of image backbones, training / fine-tuning with its TracIn factors, dense matrices.


rule pretrain:
    input:
        train_set="results/data/{source}/split{split}/train.npz",
        val_set="results/data/{source}/split{split}/val.npz",
    output:
        checkpoints=directory("results/pretrained/{model}/{source}/split{split}/checkpoints"),
        history="results/pretrained/{model}/{source}/split{split}/history.csv",
    params:
        model=lambda w: w.model,
        settings=lambda w: cfg.pretrain_settings(config, w.model),
        seed=lambda w: int(w.split),
        download=config["download"],
        code=stage_fingerprint("train"),
    log:
        "results/logs/pretrain/{model}_{source}_split{split}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}_{source}_split{split}.tsv"
    threads: threads_for("train")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoints=directory("results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/checkpoints"),
        history="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/history.csv",
        factors=directory("results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/factors"),
    params:
        model=lambda w: w.model,
        settings=lambda w: cfg.train_settings(config, w.dataset, w.model),
        seed=lambda w: int(w.seed),
        download=config["download"],
        code=stage_fingerprint("train"),
    log:
        "results/logs/train/{dataset}/{model}/{glitch}/r{ratio}/s{seed}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{model}/{glitch}/r{ratio}/s{seed}.tsv"
    threads: threads_for("train")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"


rule dense_influence:
    input:
        factors="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/factors",
        train_set="results/data/{dataset}/{glitch}/r{ratio}/s{seed}/train.npz",
        val_set=lambda w: data_path(w.dataset, w.seed, "val"),
        checkpoints="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/checkpoints",
    output:
        dense="results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}/dense_influence.npz",
    params:
        model=lambda w: w.model,
        settings=lambda w: cfg.train_settings(config, w.dataset, w.model),
        seed=lambda w: int(w.seed),
        backend=config["influence"]["backend"],
        weighting=config["influence"]["weighting"],
        device=config["device"],
        code=stage_fingerprint("dense_influence"),
    log:
        "results/logs/dense_influence/{dataset}/{model}/{glitch}/r{ratio}/s{seed}.log",
    benchmark:
        "results/benchmarks/dense_influence/{dataset}/{model}/{glitch}/r{ratio}/s{seed}.tsv"
    threads: threads_for("influence")
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/stage.py"
