# Shared definitions: the job grid, wildcard constraints, code fingerprints, paths.
import hashlib
import re
from pathlib import Path

from influence_signals import config as cfg
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


def code(*modules):
    """Fingerprint of the package modules a rule runs: Snakemake cannot see edits to imported code."""
    digest = hashlib.sha256()
    for module in ("stages", "artifacts", *modules):
        digest.update((PACKAGE / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


def threads_for(stage):
    return int(config.get("threads", {}).get(stage, 1))


def run_paths(pattern, jobs=None):
    return [pattern.format(**job.wildcards) for job in (JOBS if jobs is None else jobs)]
