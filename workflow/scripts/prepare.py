"""Snakemake script: the prepare stage (logic in influence_signals.stages)."""
from influence_signals import stages

stages.run_from_snakemake(snakemake, stages.prepare)  # noqa: F821 - injected by Snakemake
