# Model stages: pre-training of image backbones, training / fine-tuning, TracIn factors.


rule pretrain:
    input:
        train_set=DATA.replace("{dataset}", "{source}") + "/train.npz",
        val_set=DATA.replace("{dataset}", "{source}") + "/val.npz",
    output:
        checkpoints=directory("results/pretrained/{model}/{source}/checkpoints"),
        history="results/pretrained/{model}/{source}/history.csv",
    params:
        model=lambda w: w.model,
        settings=lambda w: cfg.pretrain_settings(config, w.model),
        seed=config["prepare"]["seed"],
        download=config["download"],
        code=code(TRAIN_CODE, "datasets", "models", "training"),
    log:
        "results/logs/pretrain/{model}_{source}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}_{source}.tsv"
    threads: threads_for("train")
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/train.py"


def train_inputs(wildcards):
    inputs = {
        "train_set": GLITCHED.format(**wildcards) + "/train.npz",
        "val_set": DATA.format(dataset=wildcards.dataset) + "/val.npz",
    }
    if cfg.train_settings(config, wildcards.dataset, wildcards.model)["pretrained"] == "pipeline":
        source = cfg.pretrain_source(config, wildcards.model)
        inputs["pretrained"] = f"results/pretrained/{wildcards.model}/{source}/checkpoints"
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
        code=code(TRAIN_CODE, "datasets", "models", "training"),
    log:
        RUN.replace("results/runs", "results/logs/train") + ".log",
    benchmark:
        RUN.replace("results/runs", "results/benchmarks/train") + ".tsv"
    threads: threads_for("train")
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/train.py"


rule influence:
    input:
        train_set=GLITCHED + "/train.npz",
        val_set=DATA + "/val.npz",
        checkpoints=RUN + "/checkpoints",
    output:
        factors=directory(RUN + "/influence"),
    params:
        model=lambda w: w.model,
        settings=lambda w: cfg.train_settings(config, w.dataset, w.model),
        seed=lambda w: int(w.seed),
        backend=config["influence"]["backend"],
        weighting=config["influence"]["weighting"],
        batch_size=config["influence"]["batch_size"],
        device=config["device"],
        write_matrix=config["influence"]["write_matrix"],
        code=code(["compute_influence", "_build"], "datasets", "models", "training", "factors", "influence"),
    log:
        RUN.replace("results/runs", "results/logs/influence") + ".log",
    benchmark:
        RUN.replace("results/runs", "results/benchmarks/influence") + ".tsv"
    threads: threads_for("influence")
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/influence.py"
