"""Snakemake script: the evaluate stage (logic in influence_signals.stages)."""
from influence_signals import stages

stages.run_from_snakemake(snakemake, stages.evaluate)  # noqa: F821 - injected by Snakemake
