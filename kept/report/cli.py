"""``kept report``: build one of the paper's tables or figures from result files outside Snakemake.

    kept report table h6 --out results/report/tables/h6 \\
        --item base:teacher=results/base/eval/teacher/h6.json --item base:xkd_z=results/base/eval/xkd_z/h6.json
    kept report figure recovery --out results/report/figures/recovery \\
        --item base:xkd_z:1000=results/base/recovery/xkd_z/step-1000.json ...

An item is ``VARIANT:MODEL[:TAG]=PATH[,DETAIL]``; TAG is the chat format of an MT-Bench file or the step of a
recovery file; DETAIL is the per-unit data behind PATH (lm-eval's raw directory of an h6/kommlu summary, the
MT-Bench judgment file, code.items.jsonl) for standard errors and paired tests. Outputs are ``OUT.csv/.md/.tex`` for tables and ``OUT.png/.pdf`` for figures.
"""

from __future__ import annotations

import argparse

from kept.errors import ConfigError
from kept.report import FIGURES, OUTPUTS, TABLES, ReportJob, build_report
from kept.report.inputs import Item


def parse_item(text: str) -> Item:
    """``VARIANT:MODEL[:TAG]=PATH[,DETAIL]`` -> Item."""
    label, sep, paths = text.partition("=")
    parts = label.split(":")
    path, _, detail = paths.partition(",")
    if not sep or not path or len(parts) not in (2, 3) or not all(parts[:2]):
        raise ConfigError(f"--item {text!r}: expected VARIANT:MODEL[:TAG]=PATH[,DETAIL]")
    return Item(variant=parts[0], model=parts[1], path=path, tag=parts[2] if len(parts) == 3 else "",
                detail=detail or None)


def report_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kept report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(OUTPUTS))
    parser.add_argument("name", help=f"tables: {', '.join(TABLES)}; figures: {', '.join(FIGURES)}")
    parser.add_argument("--item", action="append", default=[], required=True,
                        help="VARIANT:MODEL[:TAG]=PATH[,DETAIL] (repeat; order = row / legend order)")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--train-init", default="paper", help="mapping the trained students start from")
    parser.add_argument("--paper-reference", action="store_true", help="add the paper's numbers beside ours")
    parser.add_argument("--dpi", type=int, default=150)
    args = parser.parse_args(argv)
    job = ReportJob(
        kind=args.kind, name=args.name, items=tuple(parse_item(t) for t in args.item),
        outputs={ext: f"{args.out}.{ext}" for ext in OUTPUTS[args.kind]},
        train_init=args.train_init, paper_reference=args.paper_reference, dpi=args.dpi,
    )
    build_report(job)
    for ext in OUTPUTS[args.kind]:
        print(job.outputs[ext])
    return 0
