"""Snakemake script: the inject stage (logic in influence_signals.stages)."""
from influence_signals import stages

stages.run_from_snakemake(snakemake, stages.inject)  # noqa: F821 - injected by Snakemake
