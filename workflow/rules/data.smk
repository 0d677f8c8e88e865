# Data stages: shared by every model that trains on the same data set, glitch, ratio and seed.


def data_files(wildcards):
    """The user's files behind a data set (a table, an image folder): editing them reruns prepare."""
    spec = config["datasets"][wildcards.dataset] or {}
    files = []
    for key in ("path", "test_path"):
        if key in spec:
            root = Path(spec[key])
            files.extend(sorted(str(f) for f in root.rglob("*") if f.is_file()) if root.is_dir() else [str(root)])
    return files


rule prepare:
    input:
        data_files,
    output:
        train=DATA + "/train.npz",
        val=DATA + "/val.npz",
        pool=DATA + "/pool.npz",
    params:
        dataset=lambda w: w.dataset,
        spec=lambda w: config["datasets"][w.dataset] or {},
        data_dir=config["data_dir"],
        download=config["download"],
        fraction=config["prepare"]["fraction"],
        val_fraction=config["prepare"]["val_fraction"],
        seed=lambda w: int(w.split),
        code=stage_fingerprint("prepare"),
    log:
        "results/logs/prepare/{dataset}_split{split}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}_split{split}.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/prepare.py"


def inject_inputs(wildcards):
    inputs = {"clean_train": data_path(wildcards.dataset, wildcards.seed, "train")}
    if GLITCHES[wildcards.glitch].needs_source:
        source = cfg.glitch_source(config, wildcards.glitch, wildcards.dataset)
        inputs["source"] = data_path(source, wildcards.seed, "pool")
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
        code=stage_fingerprint("inject"),
    log:
        "results/logs/inject/{dataset}_{glitch}_r{ratio}_s{seed}.log",
    benchmark:
        "results/benchmarks/inject/{dataset}_{glitch}_r{ratio}_s{seed}.tsv"
    threads: 1
    conda:
        "../../envs/pipeline.yaml"
    script:
        "../scripts/inject.py"
