"""Snakemake script: the crossfit stage (logic in influence_signals.stages)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 - works without installing
from influence_signals import warm  # noqa: E402 - the standard library only: a warm job starts at once

warm.run_from_snakemake(snakemake, "crossfit")  # noqa: F821 - injected by Snakemake
