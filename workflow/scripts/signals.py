"""Snakemake script: the signals stage (logic in influence_signals.stages)."""
from influence_signals import stages

stages.run_from_snakemake(snakemake, stages.compute_signals)  # noqa: F821 - injected by Snakemake
