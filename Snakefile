# influence-signals: how well training-data influence signals find glitches in a training set.
# Stages: prepare -> inject -> (pretrain) -> train (with its TracIn factors) -> signals -> aggregate -> figures.
# With a `debug:` section (the debug command's config): crossfit (one job per seed) -> debug_report.
# `snakemake --configfile mine.yaml` runs only what mine.yaml declares: config.yaml is read only when no
# config file is given, and the schema's defaults fill the rest.
from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/debug.smk"


onstart:
    if config["warm_start"]:
        warm.start()  # jobs fork from one process that has imported torch & co. (influence_signals.warm)


onsuccess:
    warm.stop()


onerror:
    warm.stop()


rule all:
    default_target: True
    input:
        list(paths.DEBUG_OUTPUTS.values()) if DEBUG else [
            "results/summary.csv",
            "results/summary.pdf",
            *expand("results/{figure}.pdf", figure=FIGURES),
            *expand("results/{table}.{ext}", table=TABLES, ext=("csv", "md")),
            *(run_paths("dense_influence.npz") if config["influence"]["write_matrix"] else []),
        ],
