# Model stages: pre-training of image backbones, training / fine-tuning, TracIn factors.


rule pretrain:
    input:
        train_set=DATA.replace("{dataset}", "{source}") + "/train.npz",
        val_set=DATA.replace("{dataset}", "{source}") + "/val.npz",
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
        "../../envs/pipeline.yaml"
    script:
        "../scripts/train.py"


def train_inputs(wildcards):
    inputs = {
        "train_set": GLITCHED.format(**wildcards) + "/train.npz",
        "val_set": data_path(wildcards.dataset, wildcards.seed, "val"),
    }
    if cfg.train_settings(config, wildcards.dataset, wildcards.model)["pretrained"] == "pipeline":
        source = cfg.pretrain_source(config, wildcards.model)
        split = config["prepare"]["seed"]
        inputs["pretrained"] = f"results/pretrained/{wildcards.model}/{source}/split{split}/checkpoints"
    return inputs


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoints=directory(RUN + "/checkpoints"),
        history=RUN + "/history.csv",
    params:
        model=lambda w: w.model,
        settings=lambda w: cfg.train_settings(config, w.dataset, w.model),
        seed=lambda w: int(w.seed),
        download=config["download"],
        code=stage_fingerprint("train"),
    log:
        log_path("train"),
    benchmark:
        benchmark_path("train")
    threads: threads_for("train")
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/train.py"


rule influence:
    input:
        train_set=GLITCHED + "/train.npz",
        val_set=lambda w: data_path(w.dataset, w.seed, "val"),
        checkpoints=RUN + "/checkpoints",
    output:
        factors=directory(RUN + "/influence"),
    params:
        model=lambda w: w.model,
        settings=lambda w: cfg.train_settings(config, w.dataset, w.model),
        seed=lambda w: int(w.seed),
        backend=config["influence"]["backend"],
        weighting=config["influence"]["weighting"],
        device=config["device"],
        write_matrix=config["influence"]["write_matrix"],
        code=stage_fingerprint("compute_influence"),
    log:
        log_path("influence"),
    benchmark:
        benchmark_path("influence")
    threads: threads_for("influence")
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/influence.py"
