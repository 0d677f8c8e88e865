# Data stages: shared by every model that trains on the same data set, glitch, ratio and seed.


rule prepare:
    output:
        train=DATA + "/train.npz",
        val=DATA + "/val.npz",
    params:
        dataset=lambda w: w.dataset,
        spec=lambda w: config["datasets"][w.dataset] or {},
        data_dir=config["data_dir"],
        download=config["download"],
        fraction=config["prepare"]["fraction"],
        val_fraction=config["prepare"]["val_fraction"],
        seed=config["prepare"]["seed"],
        code=code(["prepare"], "datasets"),
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/prepare.py"


def inject_inputs(wildcards):
    inputs = {"clean_train": DATA.format(dataset=wildcards.dataset) + "/train.npz"}
    if wildcards.glitch == "far_ca":
        inputs["source"] = DATA.format(dataset=cfg.far_ca_source(config, wildcards.dataset)) + "/train.npz"
    return inputs


rule inject:
    input:
        unpack(inject_inputs),
    output:
        glitched_train=GLITCHED + "/train.npz",
        errors=GLITCHED + "/errors.csv",
    params:
        glitch=lambda w: w.glitch,
        ratio=lambda w: int(w.ratio),
        seed=lambda w: int(w.seed),
        options=lambda w: cfg.glitch_options(config, w.glitch),
        code=code(["inject"], "datasets", "glitches"),
    log:
        "results/logs/inject/{dataset}_{glitch}_r{ratio}_s{seed}.log",
    benchmark:
        "results/benchmarks/inject/{dataset}_{glitch}_r{ratio}_s{seed}.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/inject.py"
