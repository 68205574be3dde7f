# KEPT workflow: convert Orion checkpoints to stock Llama, recover them with XKD, evaluate, report.
# Run: snakemake --cores 2            (embedded default: the offline toy world in config.yaml)
#      snakemake --cores 8 --resources gpu=1 --configfile config/paper.yaml
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless the command line names config files: those then replace it entirely rather
# than being merged over it (a paper run must not inherit toy-world keys it does not mention).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/convert.smk"
include: "rules/train.smk"
include: "rules/eval_harness.smk"
include: "rules/mt_bench.smk"
include: "rules/longctx.smk"
include: "rules/regime.smk"
include: "rules/card.smk"
include: "rules/report.smk"
include: "rules/fetch.smk"


rule all:
    input:
        all_targets(),
    default_target: True
