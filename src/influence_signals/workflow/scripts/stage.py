"""Snakemake script of every rule: the rule's stage (``stages.STAGES[rule]``), bound to the job's files and params."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[2]))  # type: ignore[name-defined]  # noqa: F821 - works uninstalled
from influence_signals import warm  # noqa: E402 - the standard library only: a warm job starts at once

warm.run_from_snakemake(snakemake, snakemake.rule)  # type: ignore[name-defined]  # noqa: F821 - injected by Snakemake
