"""Teacher convergence (issue 26): the regime check for the default base teacher at several step counts.

The default config's data stage (world, tokenizer, eval suites, the narrow transfer corpus) is built by the workflow
in a scratch directory; then, for each step count, the base teacher of ``config.yaml`` is pretrained with that many
steps (its cosine schedule ending there), its control ``Teacher + UT`` is trained with the grid's UT settings on the
transfer corpus, both are evaluated on toy-H6 and on the held-out pretraining mixture, and the regime check of
:mod:`kept.report.regime` is applied -- the same functions the workflow's rules call. The baseline is the first step
count (the earlier default, 500): the table shows what more steps change.

    .venv/bin/python -m bench.bench_regime              # 500 and 1000 steps (~45 min of two cores, quiet)
    .venv/bin/python -m bench.bench_regime --quick      # 100 and 200 steps of a smaller world
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _data(work: Path, config: dict) -> None:
    """The default config's data stage in ``work`` (the workflow itself, targets only)."""
    import yaml

    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    snakemake = str(Path(sys.executable).parent / "snakemake")
    results = Path(config["results"])
    subprocess.run([snakemake, "--cores", "2", "--configfile", str(cfg), "-d", str(ROOT), "--",
                    str(results / "corpus"), str(results / "eval_data" / "manifest.json")],
                   cwd=ROOT, env=env, check=True, capture_output=True)


def measure(*, config: dict, steps: int, work: Path) -> dict:
    """One step count: pretrain, control, H6 and mixture loss of both, the regime check."""
    import torch

    from kept.eval.harness import HarnessConfig, TaskSpec, run_harness
    from kept.eval.mixture import MixtureLossConfig, mixture_loss
    from kept.grid import CONTROL
    from kept.report.inputs import Item
    from kept.report.regime import regime_checks
    from kept.report.results import RunResults
    from kept.train import TrainConfig, train
    from kept.train.config import method_settings
    from kept.world.pretrain import PretrainConfig, pretrain_teacher

    torch.set_num_threads(1)
    results = Path(config["results"])
    recipe = {k: v for k, v in config["world"]["teachers"]["base"].items() if k not in ("threads", "init_from")}
    recipe["steps"] = steps
    out = work / f"steps-{steps}"
    teacher = out / "teacher"
    log = out / "teacher.train_log.jsonl"
    pre = PretrainConfig(world=str(results / "world"), tokenizer=str(results / "tokenizer" / "tokenizer.model"),
                         output=str(teacher), work_dir=str(out / ".work"), seed=config["seed"], train_log=str(log),
                         **recipe)
    if not teacher.is_dir():
        pretrain_teacher(pre)
    settings = method_settings(config["train"], "ut", seed=config["seed"])
    settings.update(export_format="own", snapshot_every=0, save_state_every=0, progress=False)
    control = out / "control"
    if not control.is_dir():
        train(TrainConfig(objective="ut", student=str(teacher), corpus=str(results / "corpus"), output=str(control),
                          work_dir=str(out / ".control"), **settings))
    tasks = [TaskSpec.from_dict(t) for t in config["eval"]["h6"]]
    items = [Item("base", "teacher", str(log), "pretrain-base"),
             Item("base", CONTROL, str(out / ".control" / "train_log.jsonl"), "train")]
    for name, model in (("teacher", teacher), (CONTROL, control)):
        ev = out / "eval" / name
        if not (ev / "h6.json").is_file():
            run_harness(HarnessConfig(model=str(model), output=str(ev / "h6.json"), raw_dir=str(ev / "h6"), suite="h6",
                                      tasks=tasks, model_name=name, variant="base",
                                      task_dir=str(results / "eval_data" / "tasks"), include_defaults=False,
                                      batch_size=config["eval"]["harness"]["batch_size"], bootstrap_iters=0,
                                      dtype="float32", seed=config["seed"]))
        if not (ev / "mixture_loss.json").is_file():
            mixture_loss(MixtureLossConfig(model=str(model), world=str(results / "world"),
                                           tokenizer=str(results / "tokenizer" / "tokenizer.model"),
                                           output=str(ev / "mixture_loss.json"), mixture=pre.mixture,
                                           seq_len=pre.seq_len, sequences=config["eval"]["mixture_loss"]["sequences"],
                                           seed=config["seed"], model_name=name, variant="base"))
        items += [Item("base", name, str(ev / "h6.json"), "h6", str(ev / "h6")),
                  Item("base", name, str(ev / "mixture_loss.json"), "mixture")]
    run = RunResults(items)
    (check,) = regime_checks(run)
    row = {"teacher steps": steps, "teacher H6": round(run.h6_avg("base", "teacher").value(), 2)}
    for split, name in ((None, "all"), ("in", "in corpus"), ("out", "out of corpus")):
        d, lo, hi = check.h6[split]
        row[f"Δ H6 {name}"] = f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    d, lo, hi = check.mixture
    row["Δ mixture loss"] = f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    s = check.slope
    row["final loss slope /100 steps"] = f"{s['slope']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}]"
    row["regime"] = check.verdict
    return row


def run(*, quick: bool = False) -> dict:
    import yaml

    config = yaml.safe_load((ROOT / ("config/smoke.yaml" if quick else "config.yaml")).read_text())
    work = ROOT / "bench" / "_work" / ("regime-quick" if quick else "regime")
    work.mkdir(parents=True, exist_ok=True)
    config["results"] = str(work / "results")
    _data(work, config)
    steps = [100, 200] if quick else [500, 1000]
    rows = [measure(config=config, steps=n, work=work) for n in steps]
    return {"title": "Teacher convergence: the regime check at several step counts (base teacher)", "rows": rows,
            "notes": (f"config {'config/smoke.yaml' if quick else 'config.yaml'}'s base recipe with only its step count "
                      f"changed (cosine schedule over the steps); Teacher + UT trained with the grid's UT settings on "
                      f"the transfer corpus (coverage {config['corpus'].get('coverage', 1.0)}); Δ = Teacher + UT minus "
                      "the teacher with 95% paired-bootstrap intervals; the baseline is the first step count.")}


if __name__ == "__main__":
    import argparse

    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    result = run(quick=parser.parse_args().quick)
    print(pd.DataFrame(result["rows"]).to_markdown(index=False))
    print(result["notes"])
