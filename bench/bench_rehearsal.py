"""Rehearsal of the paper run's training path at Orion-14B's real width and a reduced depth.

What runs is ``config/paper.yaml``'s own training path, not a copy of it: every job is a
:class:`kept.train.TrainConfig` built by :func:`kept.train.config.method_settings` from the config's ``train``
section (the function the train rule calls), started through :func:`kept.train.launch.start` with the config's
launcher, process count and accelerate profile (``profiles/accelerate/<train.accelerate_profile>.yaml``, as
scripts/train.py passes it), with its objectives, bf16 weights, mixed precision, gradient checkpointing, chunked
loss, snapshot export and final export; the pilot is built by :func:`kept.train.config.pilot_settings` and run by
``kept pilot`` (the pilot rule's :func:`kept.train.pilot.run_pilot`). One job kills the launcher and its workers
after the first resumable state (SIGKILL to the whole process tree, as a scheduler's time limit does) and starts it again: the
second process must resume from that state. Only the budget is the rehearsal's own: ``--steps`` optimizer steps
with snapshots every ``--snapshot-every`` (the paper runs 30 000 and 5 000).

The models are synthetic: a random Orion-format teacher (pickled ``.bin`` shards, as the hub ships them) of
Orion-14B's width (hidden 5120, intermediate 15360, 40 heads, vocabulary 84608) with ``depth`` layers, converted
by :func:`kept.convert.convert_checkpoint` with the config's ``train.init`` norm and ``convert.dtype``, and a
random packed corpus of the config's ``corpus.max_length`` (4096). Each job reports its main process's peak GPU
memory (allocated and reserved), peak host RSS and the median time of the steps that wrote nothing; a least-squares
line against depth extrapolates them to Orion-14B's 40 layers, to compare against an 80 GB A100.

    python -m bench.bench_rehearsal --out-dir OUT                  # GPU: depths 2 4 8, the paper config
    python -m bench.bench_rehearsal --width tiny --depths 1 2 \\
        --launchers none torchrun accelerate:deepspeed_zero2_offload --out-dir OUT     # the same on a CPU
    python -m bench.bench_rehearsal --record OUT/rehearsal.json    # write a GPU result into bench/results.md
                                                                    # and docs/memory-plan.md
    python -m bench.run rehearsal                                   # the runner's entry (skips without CUDA)

The device machine's one command is bench/rehearsal_gpu.sh (it installs the carried wheels first).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Rehearsal: the paper's training path at Orion-14B width, reduced depth (peak memory, step time)"
FULL_DEPTH = 40  # Orion-14B's layers
GPU_GIB = 80.0  # an A100 80 GB holds 81920 MiB
# Orion-14B's width (docs reference facts) and a tiny one for CPU runs of the same path
WIDTHS = {
    "orion-14b": {"hidden_size": 5120, "intermediate_size": 15360, "num_attention_heads": 40, "vocab_size": 84608},
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4, "vocab_size": 512,
             "max_length": 64},
}
PILOT = "pilot"


@dataclass
class Job:
    objective: str  # ut | xkd_h | xkd_z | pilot
    depth: int
    launcher: str  # none | torchrun | accelerate
    profile: str | None  # accelerate profile name
    resume: bool = False  # kill after the first saved state, then start again

    @property
    def name(self) -> str:
        via = self.launcher + (f":{self.profile}" if self.profile else "")
        return f"{self.objective}-d{self.depth}-{via.replace(':', '-')}" + ("-resume" if self.resume else "")


# ---- synthetic models ---------------------------------------------------------------------------------------
def orion_config(width: dict[str, int], depth: int, max_length: int) -> dict[str, Any]:
    heads = width["num_attention_heads"]
    return {"model_type": "orion", "vocab_size": width["vocab_size"], "hidden_size": width["hidden_size"],
            "intermediate_size": width["intermediate_size"], "num_hidden_layers": depth,
            "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": max_length,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}


def build_pair(root: Path, *, width: dict[str, int], depth: int, max_length: int, rows: int, paper: dict,
               device: str) -> dict[str, Path | int]:
    """Teacher (Orion format), its converted student (train.init, convert.dtype) and a random packed corpus."""
    from bench.bench_gpu import _random_corpus, _write_sp_model, write_teacher
    from kept.convert import convert_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    tok = root / "tokenizer.model"
    if not tok.is_file():
        _write_sp_model(tok, vocab=width["vocab_size"])
    teacher, student, corpus = root / "teacher", root / "student", root / "corpus"
    n_params = write_teacher(teacher, orion_config(width, depth, max_length), tokenizer=tok, device=device)
    _random_corpus(corpus, vocab=width["vocab_size"], length=max_length, rows=rows, seed=0)
    convert_checkpoint(source=teacher, output=student, norm=paper["train"]["init"],
                       dtype=paper["convert"]["dtype"], max_shard_size=paper["convert"]["max_shard_size"],
                       calibration=corpus, fidelity_tokens=0, device=device)
    return {"teacher": teacher, "student": student, "corpus": corpus, "params": n_params}


# ---- one job --------------------------------------------------------------------------------------------------
def train_config(job: Job, pair: dict, work: Path, paper: dict, *, steps: int, snapshot_every: int,
                 save_state_every: int) -> Any:
    from kept.train import TrainConfig
    from kept.train.config import method_settings

    settings = method_settings(paper["train"], job.objective, seed=paper["seed"])
    settings.update(steps=steps, snapshot_every=snapshot_every, log_every=1, progress=False,
                    save_state_every=save_state_every if job.resume else 0)
    return TrainConfig(objective=job.objective, student=str(pair["student"]), corpus=str(pair["corpus"]),
                       teacher=str(pair["teacher"]) if job.objective != "ut" else None,
                       output=str(work / "model"), work_dir=str(work), **settings)


def run_training(job: Job, cfg: Any, *, num_processes: int, log: Path, timeout_s: float) -> dict[str, Any]:
    from kept.train.launch import finish, start

    profile = str(ROOT / "profiles" / "accelerate" / f"{job.profile}.yaml") if job.profile else None
    kw = dict(launcher=job.launcher, num_processes=num_processes, accelerate_config=profile, log_file=str(log))
    out: dict[str, Any] = {}
    if job.resume:
        proc = start(cfg, **kw)
        state = Path(cfg.work_dir) / "resume"
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if any(state.glob("step-*/trainer_state.json")):
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            raise RuntimeError(f"{job.name}: the job ended (exit {proc.returncode}) before its first saved state")
        kill_tree(proc)
        out["killed_at_state"] = max(int(p.parent.name.split("-")[1]) for p in state.glob("step-*/trainer_state.json"))
        if Path(cfg.output).exists():
            raise RuntimeError(f"{job.name}: a killed job left a final model at {cfg.output}")
    summary = finish(start(cfg, **kw), cfg)
    if job.resume and summary["resumed_from"] != out["killed_at_state"]:
        raise RuntimeError(f"{job.name}: resumed from step {summary['resumed_from']}, the saved state was "
                           f"step {out['killed_at_state']}")
    return {**summary, **out}


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and all its descendants at once, as a scheduler's time limit does (the cgroup); killing
    the launcher's process group is not enough: torch's elastic agent starts each worker in a session of its own,
    and an orphaned worker would go on writing the state the next job resumes from."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=60)
    proc.wait()


def run_pilot_job(job: Job, pair: dict, work: Path, paper: dict, *, steps: int, log: Path) -> dict[str, Any]:
    """The pilot rule's path: PilotConfig from pilot_settings, run by ``kept pilot`` in a process of its own."""
    from kept.train.config import pilot_settings

    settings = pilot_settings(paper["train"], seed=paper["seed"])
    settings.update(steps=steps, log_every=1, progress=False)
    cfg = {"student": str(pair["student"]), "teacher": str(pair["teacher"]), "corpus": str(pair["corpus"]),
           "output": str(work / "cosine.jsonl"), "work_dir": str(work), **settings}
    work.mkdir(parents=True, exist_ok=True)
    (work / "pilot.json").write_text(json.dumps(cfg))
    with open(log, "a") as fh:
        proc = subprocess.run([sys.executable, "-m", "kept.cli", "pilot", "--config", str(work / "pilot.json")],
                              stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{job.name}: kept pilot failed with exit code {proc.returncode}")
    return json.loads((work / "summary.json").read_text())


def step_seconds(work: Path, *, snapshot_every: int, save_state_every: int) -> float | None:
    """Median seconds of the steps s -> s+1 during which nothing was written (no snapshot or state at step s);
    step 1 (first-step set-up) is never counted."""
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines() if line.strip()]
    times = {e["step"]: e["elapsed_s"] for e in log}
    clean = []
    for s in sorted(times):
        if s + 1 not in times:
            continue
        wrote = (snapshot_every and s % snapshot_every == 0) or (save_state_every and s % save_state_every == 0)
        if not wrote:
            clean.append(times[s + 1] - times[s])
    return statistics.median(clean) if clean else None


# ---- the rehearsal ----------------------------------------------------------------------------------------------
def plan(objectives: list[str], depths: list[int], launchers: list[tuple[str, str | None]],
         resume: bool) -> list[Job]:
    """Objective-major order (the most memory-hungry first, as given), every launcher, every depth; the resume job
    (first launcher, first trained objective, smallest depth) right after the first objective's sweep."""
    jobs: list[Job] = []
    trained = [o for o in objectives if o != PILOT]
    for i, objective in enumerate(objectives):
        for launcher, profile in launchers:
            if objective == PILOT and (launcher, profile) != launchers[0]:
                continue  # the pilot rule runs in-process, with no launcher: once is enough
            jobs.extend(Job(objective, d, launcher, profile) for d in depths)
        if resume and trained and objective == trained[0]:
            jobs.append(Job(objective, min(depths), launchers[0][0], launchers[0][1], resume=True))
    return jobs


def rehearse(*, config: Path, width: str, depths: list[int], objectives: list[str] | None,
             launchers: list[str] | None, steps: int, snapshot_every: int, save_state_every: int, resume: bool,
             out_dir: Path, work_dir: Path, budget_s: float, keep: bool = False) -> dict[str, Any]:
    """Run the planned jobs within ``budget_s`` seconds (a job expected to overrun is skipped and listed), write
    ``out_dir/rehearsal.json`` and ``out_dir/rehearsal.md`` after every job, return the result."""
    import torch
    import yaml

    t_start = time.monotonic()
    paper = yaml.safe_load(config.read_text())
    train = paper["train"]
    w = WIDTHS[width]
    max_length = int(w.get("max_length") or paper["corpus"]["max_length"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    specs = [tuple(s.split(":", 1)) if ":" in s else (s, None) for s in launchers] if launchers else \
        [(train["launcher"], train["accelerate_profile"] if train["launcher"] == "accelerate" else None)]
    if objectives is None:
        objectives = ["xkd_h", "xkd_z", PILOT, "ut"]
        objectives = [o for o in objectives if o in train["methods"] or (o == PILOT and train["pilot"]["variants"])]
    jobs = plan(objectives, sorted(depths), specs, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "title": TITLE, "config": str(config), "width": width, "widths": w, "max_length": max_length,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.processor()})",
        "torch": torch.__version__, "steps": steps, "snapshot_every": snapshot_every, "budget_s": budget_s,
        "config_launcher": {k: train.get(k) for k in ("launcher", "accelerate_profile", "num_processes")},
        "train_settings": {o: _settings_view(paper, o) for o in objectives}, "rows": [], "skipped": [],
        "errors": [], "versions": _versions(),
    }
    rows_needed = steps * train["batch_size"] * train["grad_accum"] * int(train.get("num_processes", 1)) + 4
    pairs: dict[int, dict] = {}
    last_wall: dict[int, float] = {}
    for i, job in enumerate(jobs):
        for d in [d for d in pairs if d not in {j.depth for j in jobs[i:]}] if not keep else []:
            shutil.rmtree(work_dir / f"models-d{d}", ignore_errors=True)  # disk: no later job needs it
            del pairs[d]
        elapsed = time.monotonic() - t_start
        guess = _guess(last_wall, job.depth) * (2.2 if job.resume else 1.0)
        if elapsed + guess > budget_s:
            result["skipped"].append({"job": job.name, "why": f"budget: {elapsed:.0f} s spent, ~{guess:.0f} s more"})
            continue
        work = work_dir / job.name
        log = out_dir / "logs" / f"{job.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            if job.depth not in pairs:
                tb = time.monotonic()
                pairs[job.depth] = build_pair(work_dir / f"models-d{job.depth}", width=w, depth=job.depth,
                                              max_length=max_length, rows=rows_needed, paper=paper, device=device)
                pairs[job.depth]["build_s"] = time.monotonic() - tb
                if device == "cuda":
                    torch.cuda.empty_cache()
            pair = pairs[job.depth]
            shutil.rmtree(work, ignore_errors=True)
            t0 = time.monotonic()
            if job.objective == PILOT:
                summary = run_pilot_job(job, pair, work, paper, steps=steps, log=log)
                save_every = 0
            else:
                cfg = train_config(job, pair, work, paper, steps=steps, snapshot_every=snapshot_every,
                                   save_state_every=save_state_every)
                summary = run_training(job, cfg, num_processes=int(train.get("num_processes", 1)), log=log,
                                       timeout_s=max(60.0, budget_s - elapsed))
                save_every = cfg.save_state_every
                _check_outputs(cfg, steps=steps, snapshot_every=snapshot_every)
            wall = time.monotonic() - t0
            result["rows"].append(_row(job, pair, summary, wall=wall,
                                       step_s=step_seconds(work, snapshot_every=0 if job.objective == PILOT else
                                                           snapshot_every, save_state_every=save_every)))
            last_wall[job.depth] = max(last_wall.get(job.depth, 0.0), wall + (0 if job.depth in last_wall else
                                                                               pair.get("build_s", 0.0)))
        except Exception as exc:  # noqa: BLE001 - one failed job must not hide the others' figures
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            result["errors"].append({"job": job.name, "error": f"{type(exc).__name__}: {exc}", "log_tail": tail})
            last_wall[job.depth] = max(last_wall.get(job.depth, 0.0), time.monotonic() - t0)
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)  # snapshots, exports and resume states are large
        result["fits"] = fit_depth(result["rows"])
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        _write(result, out_dir)
    if not keep:
        for d in pairs:
            shutil.rmtree(work_dir / f"models-d{d}", ignore_errors=True)
    result["fits"] = fit_depth(result["rows"])
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    _write(result, out_dir)
    return result


def _settings_view(paper: dict, objective: str) -> dict[str, Any]:
    from kept.train.config import method_settings, pilot_settings

    train = paper["train"]
    s = pilot_settings(train, seed=paper["seed"]) if objective == PILOT else \
        method_settings(train, objective, seed=paper["seed"])
    keep = ("mixed_precision", "model_dtype", "teacher_dtype", "gradient_checkpointing", "kl_chunk_size",
            "kl_recompute", "batch_size", "grad_accum", "max_length")
    return {k: s.get(k) for k in keep if k in s}


def _guess(last_wall: dict[int, float], depth: int) -> float:
    """Expected seconds of a job at ``depth`` from the slowest job seen at the nearest smaller-or-equal depth,
    scaled by depth (0 when nothing has run yet)."""
    seen = [d for d in last_wall if d <= depth] or list(last_wall)
    if not seen:
        return 0.0
    d = max(seen)
    return last_wall[d] * depth / d


def _check_outputs(cfg: Any, *, steps: int, snapshot_every: int) -> None:
    """The exports a paper run leaves: the final model and every snapshot, each a stock Llama checkpoint."""
    from transformers import AutoConfig

    snaps = range(snapshot_every, steps + 1, snapshot_every) if snapshot_every else []
    for path in [Path(cfg.output)] + [Path(cfg.work_dir) / "snapshots" / f"step-{s}" for s in snaps]:
        if AutoConfig.from_pretrained(path).model_type != "llama" or not list(path.glob("*.safetensors")):
            raise RuntimeError(f"{path}: not a stock Llama safetensors checkpoint")


def _row(job: Job, pair: dict, s: dict, *, wall: float, step_s: float | None) -> dict[str, Any]:
    return {"job": job.name, "objective": job.objective, "depth": job.depth,
            "launcher": job.launcher + (f":{job.profile}" if job.profile else ""),
            "ran_as": s.get("distributed_type", "NO") + (f" ZeRO-{s['zero_stage']}" if s.get("zero_stage") else ""),
            "params_M": round(pair["params"] / 1e6, 1),
            "peak_gpu_alloc_gib": s.get("peak_gpu_allocated_gib"), "peak_gpu_reserved_gib": s.get("peak_gpu_reserved_gib"),
            "peak_host_gib": s.get("peak_host_rss_gib"), "s_per_step": round(step_s, 3) if step_s else None,
            "resumed_from": s.get("resumed_from"), "killed_at_state": s.get("killed_at_state"),
            "final_loss": s.get("final_loss"), "job_wall_s": round(wall, 1)}


def fit_depth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per objective and launcher with at least two depths (resume jobs left out): least-squares lines of peak GPU
    reserved/allocated memory, host memory and step time against depth, and their values at 40 layers."""
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["resumed_from"] in (None, 0) and not r.get("killed_at_state"):
            groups.setdefault((r["objective"], r["launcher"]), []).append(r)
    for (objective, launcher), rs in groups.items():
        if len({r["depth"] for r in rs}) < 2:
            continue
        fit = {"objective": objective, "launcher": launcher, "depths": sorted(r["depth"] for r in rs)}
        for key in ("peak_gpu_reserved_gib", "peak_gpu_alloc_gib", "peak_host_gib", "s_per_step"):
            pts = [(r["depth"], r[key]) for r in rs if r[key] is not None]
            if len({d for d, _ in pts}) < 2:
                fit[key] = None
                continue
            a, b = _line(pts)
            fit[key] = {"per_layer": round(b, 4), "at_0": round(a, 3), "at_40": round(a + b * FULL_DEPTH, 2)}
        gpu = fit.get("peak_gpu_reserved_gib")
        fit["fits_80gb"] = None if not gpu else gpu["at_40"] < GPU_GIB
        out.append(fit)
    return out


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "accelerate", "deepspeed"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ---- reporting ------------------------------------------------------------------------------------------------
def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(result: dict[str, Any]) -> str:
    measured = md_table(result["rows"], ["objective", "depth", "launcher", "ran_as", "params_M", "peak_gpu_reserved_gib",
                                         "peak_gpu_alloc_gib", "peak_host_gib", "s_per_step", "resumed_from",
                                         "job_wall_s"])
    fits = []
    for f in result.get("fits", []):
        def at(key: str, f: dict = f) -> Any:
            return f[key]["at_40"] if f.get(key) else None

        def slope(key: str, f: dict = f) -> Any:
            return f[key]["per_layer"] if f.get(key) else None

        fits.append({"objective": f["objective"], "launcher": f["launcher"], "depths": f["depths"],
                     "GPU reserved GiB/layer": slope("peak_gpu_reserved_gib"),
                     "GPU reserved @40": at("peak_gpu_reserved_gib"), "GPU alloc @40": at("peak_gpu_alloc_gib"),
                     "host GiB/layer": slope("peak_host_gib"), "host GiB @40": at("peak_host_gib"),
                     "s/step @40 (this GPU and host)": at("s_per_step"), "fits 80 GiB": f["fits_80gb"]})
    fit_table = md_table(fits, list(fits[0])) if fits else "(fewer than two depths of any job: no fit)"
    notes = [f"Device {result['device']}, torch {result['torch']}, versions {result['versions']}; width "
             f"{result['width']} {result['widths']}, T = {result['max_length']}, {result['steps']} steps per job "
             f"(snapshots every {result['snapshot_every']}); wall {result.get('wall_s')} s of a {result['budget_s']} s "
             "budget. GPU figures are torch's caching-allocator peaks of the main training process (DeepSpeed "
             "allocates through it); host = its peak resident set (VmHWM, pinned buffers included). s/step = median "
             "of the steps that wrote no snapshot or state. The config's launcher: "
             f"{json.dumps(result['config_launcher'])}; its settings per objective: "
             f"{json.dumps(result['train_settings'])}."]
    if result["skipped"]:
        notes.append("Skipped for time: " + ", ".join(s["job"] for s in result["skipped"]) + ".")
    for e in result["errors"]:
        notes.append(f"FAILED {e['job']}: {e['error']}")
    return (f"## {result['title']}\n\nMeasured:\n\n{measured}\n\nFitted against depth, extrapolated to "
            f"{FULL_DEPTH} layers:\n\n{fit_table}\n\n" + "\n\n".join(notes))


def _write(result: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "rehearsal.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "rehearsal.md").write_text(to_markdown(result) + "\n")


BEGIN, END = "<!-- rehearsal:begin -->", "<!-- rehearsal:end -->"


def record(result_file: Path, *, results_md: Path = ROOT / "bench" / "results.md",
           memory_plan: Path = ROOT / "docs" / "memory-plan.md") -> None:
    """Write a measured result into bench/results.md (its ``rehearsal`` section) and docs/memory-plan.md
    (between the rehearsal markers). Refuses a result measured without CUDA: a CPU run's figures mean nothing."""
    from bench.run import MARK, read_sections

    result = json.loads(result_file.read_text())
    if result["device"].startswith("cpu"):
        raise SystemExit(f"{result_file}: measured on {result['device']}, not on a GPU; not recorded")
    text = to_markdown(result) + f"\n\n_`python -m bench.bench_rehearsal` (recorded from {result_file.name})_\n"
    old = results_md.read_text() if results_md.exists() else "# Benchmark results\n\n"
    head = old.split("<!-- bench:", 1)[0]
    sections = read_sections(old)
    sections["rehearsal"] = text
    results_md.write_text(head + "\n".join(f"{MARK.format(n)}\n{t}" for n, t in sections.items()))
    doc = memory_plan.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{memory_plan}: no {BEGIN} ... {END} markers")
    before, rest = doc.split(BEGIN, 1)
    memory_plan.write_text(before + BEGIN + "\n" + text.replace("## ", "### ", 1) + END + rest.split(END, 1)[1])


def run(*, quick: bool = False) -> dict:
    """bench.run entry: the GPU rehearsal (depths 2 4 8; --quick: 2 4), skipped without CUDA."""
    import tempfile

    import torch

    if not torch.cuda.is_available():
        return {"title": TITLE, "rows": [], "notes": "Skipped: no CUDA device on this machine (the CPU run of the "
                "same path is tests/test_rehearsal.py; its figures mean nothing)."}
    with tempfile.TemporaryDirectory() as tmp:
        res = rehearse(config=ROOT / "config" / "paper.yaml", width="orion-14b", depths=[2, 4] if quick else
                       [2, 4, 8], objectives=None, launchers=None, steps=4, snapshot_every=2, save_state_every=2,
                       resume=True, out_dir=Path(tmp) / "out", work_dir=Path(tmp) / "work", budget_s=3600)
    return {"title": TITLE, "rows": res["rows"], "notes": to_markdown(res).split("\n\n", 1)[1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "paper.yaml")
    ap.add_argument("--width", choices=sorted(WIDTHS), default="orion-14b")
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--objectives", nargs="+", choices=["xkd_h", "xkd_z", "ut", PILOT],
                    help="default: the config's methods (XKD-h first) and the pilot")
    ap.add_argument("--launchers", nargs="+", metavar="LAUNCHER[:PROFILE]",
                    help="default: the config's train.launcher and train.accelerate_profile")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--snapshot-every", type=int, default=2)
    ap.add_argument("--save-state-every", type=int, default=2, help="for the kill-and-resume job")
    ap.add_argument("--no-resume", action="store_true", help="leave out the kill-and-resume job")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no job expected to end after this")
    ap.add_argument("--out-dir", type=Path, default=Path("rehearsal-out"))
    ap.add_argument("--work-dir", type=Path, help="models and runs (default: OUT_DIR/work, deleted as it goes)")
    ap.add_argument("--keep", action="store_true", help="keep the models and the runs' outputs")
    ap.add_argument("--record", type=Path, metavar="REHEARSAL_JSON",
                    help="write a GPU result into bench/results.md and docs/memory-plan.md, run nothing")
    a = ap.parse_args(argv)
    if a.record:
        record(a.record)
        return 0
    res = rehearse(config=a.config, width=a.width, depths=a.depths, objectives=a.objectives, launchers=a.launchers,
                   steps=a.steps, snapshot_every=a.snapshot_every, save_state_every=a.save_state_every,
                   resume=not a.no_resume, out_dir=a.out_dir, work_dir=a.work_dir or a.out_dir / "work",
                   budget_s=a.budget_s, keep=a.keep)
    print(to_markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
