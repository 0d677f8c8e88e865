# influence-signals: how well training-data influence signals find glitches in a training set.
# Stages: prepare -> inject -> (pretrain) -> train -> influence -> signals -> evaluate -> aggregate.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        "results/summary.csv",
        "results/summary.pdf",
        expand("results/{figure}.pdf", figure=FIGURES),
        expand("results/{table}.{ext}", table=TABLES, ext=("csv", "md")),
