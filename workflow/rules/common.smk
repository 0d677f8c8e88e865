# Shared definitions: the job grid, wildcard constraints, code fingerprints, paths.
import hashlib
import inspect
import re
from pathlib import Path

from influence_signals import config as cfg
from influence_signals import stages
from influence_signals.glitches import GLITCHES
from influence_signals.models import MODELS

cfg.check(config)
JOBS = cfg.all_jobs(config)
FIGURES = sorted(config.get("figures") or {})
TABLES = sorted(config.get("tables") or {})
PACKAGE = Path(workflow.basedir) / "src" / "influence_signals"
DATA = "results/data/{dataset}"
GLITCHED = DATA + "/{glitch}/r{ratio}/s{seed}"
RUN = "results/runs/{dataset}/{model}/{glitch}/r{ratio}/s{seed}"
TRAIN_CODE = ["train", "_build", "_train_settings", "_load_pretrained"]


def alternatives(names):
    """A regex matching exactly these names, so that no path parses two ways."""
    return "|".join(re.escape(str(n)) for n in sorted(names))


wildcard_constraints:
    dataset=alternatives(config["datasets"]),
    source=alternatives(config["datasets"]),
    model=alternatives(MODELS),
    glitch=alternatives(GLITCHES),
    ratio=r"\d+",
    seed=r"\d+",
    figure=alternatives(FIGURES) or "no-figures",
    table=alternatives(TABLES) or "no-tables",


def code(functions, *modules):
    """Fingerprint of the code a rule runs: Snakemake cannot see edits to imported code.

    It hashes the rule's stage functions (not all of ``stages``, so editing one stage reruns that stage
    alone and what follows) and the concept modules they call.
    """
    digest = hashlib.sha256()
    for function in functions:
        digest.update(inspect.getsource(getattr(stages, function)).encode())
    for module in ("artifacts", *modules):
        digest.update((PACKAGE / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


def threads_for(stage):
    return int(config.get("threads", {}).get(stage, 1))


def run_paths(pattern, jobs=None):
    return [pattern.format(**job.wildcards) for job in (JOBS if jobs is None else jobs)]
