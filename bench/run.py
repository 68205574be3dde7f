"""Run the benchmarks and write bench/results.md.

Every benchmark module ``bench/bench_<name>.py`` exposes ``run(*, quick: bool = False) -> dict`` returning
``{"title": str, "rows": [dict, ...], "notes": str}``; each figure in its rows is a ratio against a baseline
measured in the same run (medians over repeats). This runner records the machine and package versions, prints
every table and writes them to ``bench/results.md``.

    .venv/bin/python -m bench.run                 # all benchmarks
    .venv/bin/python -m bench.run kl trainer      # a subset
    .venv/bin/python -m bench.run --quick         # smaller sizes, for a smoke check

A subset run replaces only its own sections of an existing ``results.md`` (each section is delimited by a
``<!-- bench:<name> -->`` marker and records its own command and date), so the long benchmarks can be rerun
one at a time; a ``--quick`` run is kept as a section of its own (``<name>-quick``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata as md
import os
import platform
import re
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ORDER = ["convert", "convert_family", "kl", "trainer", "recovery", "pipeline", "gpu"]
PACKAGES = ["torch", "transformers", "accelerate", "safetensors", "lm-eval", "snakemake", "trl"]


def machine() -> dict[str, str]:
    import psutil

    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores (logical)": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - informational only
        pass
    for pkg in PACKAGES:
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "not installed"
    return info


def available() -> list[str]:
    found = {p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke check, not for the record)")
    ap.add_argument("--out", default=str(HERE / "results.md"), help="Markdown file to write")
    args = ap.parse_args(argv)
    names = args.names or available()
    sections: dict[str, str] = {}
    for name in names:
        mod = importlib.import_module(f"bench.bench_{name}")
        t0 = time.perf_counter()
        result = mod.run(quick=args.quick)
        took = time.perf_counter() - t0
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python -m bench.run " + " ".join((["--quick"] if args.quick else []) + [name])
        text = f"{section(result)}\n\n_`{command}`, {stamp}, took {took:.0f} s_\n"
        print(text, flush=True)
        sections[f"{name}-quick" if args.quick else name] = text
    out = Path(args.out)
    kept = read_sections(out.read_text()) if out.exists() else {}
    order = [f"{n}{q}" for n in ORDER for q in ("", "-quick")]
    merged = {n: sections.get(n) or kept[n] for n in [*order, *sorted(set(kept) | set(sections))]
              if n in sections or n in kept}
    header = ("# Benchmark results\n\nWritten by `python -m bench.run`; each section names the command and date "
              "of its own run. Machine and versions of the latest run:\n\n"
              + pd.DataFrame([machine()]).T.rename(columns={0: "value"}).to_markdown() + "\n\n")
    out.write_text(header + "\n".join(f"{MARK.format(n)}\n{t}" for n, t in merged.items()))
    print(f"wrote {out}")
    return 0


def section(result: dict) -> str:
    """A benchmark's result as Markdown: title, table, notes (also what ``python -m bench.bench_<name>`` prints)."""
    table = pd.DataFrame(result["rows"]).to_markdown(index=False) if result["rows"] else "(no rows)"
    return f"## {result['title']}\n\n{table}\n\n{result.get('notes', '').strip()}"


MARK = "<!-- bench:{} -->"


def read_sections(text: str) -> dict[str, str]:
    """name -> section text of a results.md written by this runner."""
    parts = re.split(r"^<!-- bench:([\w-]+) -->\n", text, flags=re.M)
    return {name: body.strip() + "\n" for name, body in zip(parts[1::2], parts[2::2])}


if __name__ == "__main__":
    sys.exit(main())
