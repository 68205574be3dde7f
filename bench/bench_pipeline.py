"""Pipeline time: the whole default DAG (or the smoke DAG with --quick) from a fresh copy of the workflow.

The bench copies the tracked workflow into a scratch directory, runs ``snakemake --cores 2`` there with this
interpreter's environment, and reads Snakemake's own benchmark files (``results/benchmarks/<rule>/*.tsv``) for
the time of every job. It reports, per rule, the job count and summed job seconds, and overall the wall time
against two baselines measured in the same run: the summed job time (wall / sum < 1 means the two cores
overlapped jobs) and the time budget (25 min default since issue 26's regime, 3 min smoke).

    .venv/bin/python -m bench.bench_pipeline            # default config (~25 min on a quiet machine)
    .venv/bin/python -m bench.bench_pipeline --quick    # smoke config
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = {"config.yaml": 25 * 60, "config/smoke.yaml": 3 * 60}


def copy_workflow(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def job_seconds(bench_dir: Path, column: str = "s") -> dict[str, list[float]]:
    """rule -> one figure per job from Snakemake's benchmark TSVs: wall seconds (column ``s``) or CPU seconds
    (``cpu_time``, user + sys of the job's processes)."""
    per_rule: dict[str, list[float]] = {}
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        rule = tsv.relative_to(bench_dir).parts[0]
        with open(tsv, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        per_rule.setdefault(rule, []).extend(float(r[column]) for r in rows)
    return per_rule


def run(*, quick: bool = False) -> dict:
    configfile = "config/smoke.yaml" if quick else "config.yaml"
    work = ROOT / "bench" / "_work" / "pipeline"
    shutil.rmtree(work, ignore_errors=True)
    copy_workflow(work)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    snakemake = str(Path(sys.executable).parent / "snakemake")
    t0 = time.perf_counter()
    proc = subprocess.run([snakemake, "--cores", "2", "--configfile", configfile], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    import yaml

    results = work / yaml.safe_load((work / configfile).read_text())["results"]
    per_rule = job_seconds(results / "benchmarks")
    cpu = {rule: sum(v) for rule, v in job_seconds(results / "benchmarks", "cpu_time").items()}
    total = sum(sum(v) for v in per_rule.values())
    total_cpu = sum(cpu.values())
    rows = [{"rule": rule, "jobs": len(s), "job seconds": round(sum(s), 1), "job CPU seconds": round(cpu[rule], 1),
             "share of job time": f"{sum(s) / total:.1%}"}
            for rule, s in sorted(per_rule.items(), key=lambda kv: -sum(kv[1]))]
    budget = BUDGET_S[configfile]
    load = os.getloadavg()
    notes = (
        f"`snakemake --cores 2 --configfile {configfile}` from a fresh copy: wall {wall / 60:.1f} min for "
        f"{sum(len(s) for s in per_rule.values())} benchmarked jobs summing to {total / 60:.1f} min "
        f"(wall / job-time {wall / total:.2f}); wall / budget ({budget // 60} min) = {wall / budget:.2f}. "
        f"The jobs' CPU time sums to {total_cpu / 60:.1f} min (CPU / job-time {total_cpu / total:.2f}: the share of "
        f"their wall time the jobs' single-threaded work got a core on a contended machine); quiet-machine estimate "
        f"wall x CPU / job-time = {wall * total_cpu / total / 60:.1f} min (an estimate, not a measurement, and low: "
        f"a job's waits on I/O count in its wall time, not its CPU time). "
        f"Load average after the run: {load[0]:.1f} (a shared machine inflates every figure)."
    )
    return {"title": f"Pipeline time per rule ({'smoke' if quick else 'default'} config, 2 cores)", "rows": rows,
            "notes": notes}


if __name__ == "__main__":
    from bench.run import section

    print(section(run(quick="--quick" in sys.argv)))
