"""Snakemake script: the dense-influence stage (logic in influence_signals.stages)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 - works without installing
from influence_signals import stages  # noqa: E402

stages.run_from_snakemake(snakemake, stages.dense_influence)  # noqa: F821 - injected by Snakemake
