"""Snakemake script: the train stage (logic in influence_signals.stages)."""
from influence_signals import stages

stages.run_from_snakemake(snakemake, stages.train)  # noqa: F821 - injected by Snakemake
