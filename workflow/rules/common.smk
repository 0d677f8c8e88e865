# Shared definitions: the validated config, the job grid, wildcard constraints, code fingerprints, paths.
import re

from influence_signals import config as cfg
from influence_signals.datasets import DATASETS
from influence_signals.fingerprint import stage_fingerprint
from influence_signals.glitches import GLITCHES
from influence_signals.models import MODELS

cfg.validate(config)  # fills the schema's defaults; a bad config stops here, before any job
JOBS = cfg.all_jobs(config)
FIGURES = sorted(config["figures"])
TABLES = sorted(config["tables"])
DATA = "results/data/{dataset}/split{split}"
GLITCHED = "results/data/{dataset}/{glitch}/r{ratio}/s{seed}"
RUN = "results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}"


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
    return DATA.format(dataset=dataset, split=cfg.split_seed(config, seed)) + f"/{name}.npz"


def log_path(stage):
    return RUN.replace("results/runs", f"results/logs/{stage}") + ".log"


def benchmark_path(stage):
    return RUN.replace("results/runs", f"results/benchmarks/{stage}") + ".tsv"


def threads_for(stage):
    return int(config["threads"].get(stage, 1))


def run_paths(pattern, jobs=None):
    return [pattern.format(**job.wildcards) for job in (JOBS if jobs is None else jobs)]
