"""Snakemake script of every rule: the rule's stage (``stages.STAGES[rule]``), bound to the job's files and params."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821 - works without installing
from influence_signals import warm  # noqa: E402 - the standard library only: a warm job starts at once

warm.run_from_snakemake(snakemake, snakemake.rule)  # noqa: F821 - injected by Snakemake
