# Shared definitions: the validated config, the job grid, wildcard constraints, input functions, code fingerprints.
import re

from influence_signals import config as cfg
from influence_signals import paths
from influence_signals import warm
from influence_signals.checkpoints import manifest_problem
from influence_signals.fingerprint import stage_fingerprint
from influence_signals.glitches import GLITCHES
from influence_signals.models import MODELS
from influence_signals.plots import FIGURE_KINDS

cfg.check_files([str(f) for f in workflow.configfiles])  # a key given twice is an error, not the last one silently
cfg.validate(config)  # fills the schema's defaults; a bad config stops here, before any job
JOBS = cfg.all_jobs(config)
for job in JOBS:  # a finished run whose checkpoint sizes differ from its manifest is named before any job runs
    folder = f"results/runs/{job.dataset}/{job.model}/{job.glitch}/r{job.ratio}/s{job.seed}/checkpoints"
    problem = manifest_problem(folder)
    if problem:
        raise WorkflowError(f"{problem}; delete {folder} to retrain it")
FIGURES = sorted(config["figures"])
TABLES = sorted(config["tables"])
RUN = paths.RUN
DEBUG = config.get("debug")  # the debug command's config: its cross-fitted runs and report instead of the study


def alternatives(names):
    """A regex matching exactly these names, so that no path parses two ways."""
    return "|".join(re.escape(str(n)) for n in sorted(names))


wildcard_constraints:
    dataset=alternatives(config["datasets"]),
    source=alternatives(config["datasets"]),
    model=alternatives(MODELS.names()),
    glitch=alternatives(GLITCHES.names()),
    ratio=r"\d+",
    seed=r"\d+",
    split=r"\d+",
    figure=alternatives(FIGURES) or "no-figures",
    table=alternatives(TABLES) or "no-tables",


def data_path(dataset, seed, name):
    """A prepared split's file for a job's seed (its own split when prepare.resample_per_seed)."""
    return f"results/data/{dataset}/split{cfg.split_seed(config, seed)}/{name}.npz"


def threads_for(stage):
    return int(config["threads"].get(stage, 1))


def run_paths(name, jobs=None):
    """A per-job file of every job (or of ``jobs``)."""
    return [f"{RUN.format(**job.wildcards)}/{name}" for job in (JOBS if jobs is None else jobs)]


def data_digest(wildcards):
    """What the user's files behind a data set are now (names, sizes, times): editing them reruns prepare.
    A param, not inputs: Snakemake would read braces or <name> in a file name as a wildcard or a path variable."""
    return cfg.data_digest(config["datasets"][wildcards.dataset])


def inject_inputs(wildcards):
    inputs = {"clean_train": data_path(wildcards.dataset, wildcards.seed, "train")}
    if GLITCHES[wildcards.glitch].requires_source(cfg.glitch_options(config, wildcards.glitch)):
        source = cfg.glitch_source(config, wildcards.glitch, wildcards.dataset)
        inputs["source"] = data_path(source, wildcards.seed, "pool")
    return inputs


def pretrained_folder(model):
    return f"results/pretrained/{model}/{cfg.pretrain_source(config, model)}/split{config['prepare']['seed']}/checkpoints"


def train_inputs(wildcards):
    inputs = {
        "train_set": f"results/data/{wildcards.dataset}/{wildcards.glitch}/r{wildcards.ratio}/s{wildcards.seed}/train.npz",
        "val_set": data_path(wildcards.dataset, wildcards.seed, "val"),
    }
    if cfg.train_settings(config, wildcards.dataset, wildcards.model)["pretrained"] == "pipeline":
        inputs["pretrained"] = pretrained_folder(wildcards.model)
    return inputs


def signals_inputs(wildcards):
    run = RUN.format(**wildcards)
    data = f"results/data/{wildcards.dataset}/{wildcards.glitch}/r{wildcards.ratio}/s{wildcards.seed}"
    inputs = {"factors": f"{run}/factors", "train_set": f"{data}/train.npz", "errors": f"{data}/errors.csv",
              "val_set": data_path(wildcards.dataset, wildcards.seed, "val")}
    if config["influence"]["backend"] == "captum":  # the signals from Captum's matrices, the reference
        inputs["dense"] = f"{run}/dense_influence.npz"
    return inputs


def figure_spec(wildcards):
    return config["figures"][wildcards.figure]


def figure_inputs(wildcards):
    per_job = FIGURE_KINDS[figure_spec(wildcards)["kind"]].per_job
    return run_paths(per_job, cfg.target_jobs(config, "figures", wildcards.figure))


def figure_jobs(wildcards):
    return [job.wildcards for job in cfg.target_jobs(config, "figures", wildcards.figure)]


def table_inputs(wildcards):
    return run_paths("accuracy.csv", cfg.target_jobs(config, "tables", wildcards.table))


def table_jobs(wildcards):
    return [job.wildcards for job in cfg.target_jobs(config, "tables", wildcards.table)]


def debug_runs(wildcards):
    """Every cross-fitted run of the debug command, seed by seed and fold by fold (``crossfit.fold_folders``)."""
    debug = config["debug"]
    return [paths.crossfit(debug["dataset"], debug["model"], seed, fold)
            for seed in range(debug["seeds"]) for fold in range(debug["folds"])]
