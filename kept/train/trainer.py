"""One trainer for UT, XKD-h and XKD-z (and toy-teacher pretraining), built on accelerate.

accelerate supplies mixed precision, gradient accumulation, DDP / FSDP / DeepSpeed wrapping and the resumable state
(``save_state``/``load_state``: model, optimizer, scheduler, RNG); transformers supplies gradient checkpointing. This
module adds the objectives, the data order, snapshots, the log and the exports.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kept.atomic import check_output, remove_output, write_json
from kept.errors import CheckpointError, ConfigError
from kept.train.config import TrainConfig
from kept.train.data import BatchSchedule, PackedCorpus
from kept.train.export import export_model, link_tree
from kept.train.objectives import (OBJECTIVE_METRIC, StreamCapture, StudentObjective, decoder, head_weight,
                                   teacher_outputs)
from kept.train.parity import parity_target

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NORM_SUFFIXES = ("input_layernorm.weight", "post_attention_layernorm.weight")
FINAL_NORM = "model.norm.weight"


class LRSchedule:
    """Linear warmup to the peak, then cosine to ``min_ratio`` of it; ``step`` = updates done so far, so update k
    (0-based) runs at ``lr * self(k)``. A class (not a lambda) so the scheduler state round-trips."""

    def __init__(self, *, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Trainable parameter names split into (decayed, not decayed): every weight of a linear layer or an embedding
    decays; norm weights (any module whose class name contains "Norm") and biases do not. Chosen by name and module
    type, never by shape: DeepSpeed ZeRO-3 partitions each parameter to an empty 1-D tensor (real shape in
    ``ds_shape``), so a rule on ``p.ndim`` would put every weight in the no-decay group."""
    decay, other = [], []
    seen: set[int] = set()  # a tied weight is listed once, under its first name (as named_parameters does)
    for mod_name, module in model.named_modules():
        is_norm = "Norm" in type(module).__name__
        for leaf, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            (other if is_norm or leaf == "bias" else decay).append(name)
    return decay, other


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups (see :func:`decay_names`): ``weight_decay`` on matrices and embeddings, none on norms and
    biases."""
    params = dict(model.named_parameters())
    decay, other = decay_names(model)
    groups = [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
              {"params": [params[n] for n in other], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def norm_weight_names(model: nn.Module) -> list[str]:
    """Names of the RMSNorm weights in site order: per layer input then post-attention, then the final norm."""
    names = [n for n, _ in model.named_parameters() if n.endswith(NORM_SUFFIXES)]
    names.sort(key=lambda n: (int(n.split(".")[2]), 0 if "input_" in n else 1))
    return names + [FINAL_NORM]


def _set_trainable(model: nn.Module, cfg: TrainConfig) -> None:
    frozen: set[str] = set()
    if cfg.objective == "xkd_h":
        # the final norm and the LM head do not touch the residual stream: no gradient reaches them
        frozen |= {FINAL_NORM, "lm_head.weight"}
    if cfg.trainable == "norms":
        keep = set(norm_weight_names(model)) - frozen
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
        return
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """This process's peak memory so far, GiB: host resident set (VmHWM: pinned and pageable host memory alike)
    and, on CUDA, the caching allocator's peak allocated and reserved bytes (what DeepSpeed and torch use)."""
    import resource

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # ru_maxrss is KiB on Linux
    cuda = device.type == "cuda"
    return {"peak_host_rss_gib": round(host, 3),
            "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3) if cuda else None}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from exc


def student_is_centered(student_dir: str | Path) -> bool:
    """Whether the conversion mean-centred the student's residual stream (conversion.json "centered")."""
    path = Path(student_dir) / "conversion.json"
    return bool(_read_json(path).get("centered", False)) if path.is_file() else False


def _new_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import InitProcessGroupKwargs

    # No cpu=True here: accelerate picks the CPU by itself on a host without a GPU, and cpu=True would silently
    # replace a launcher's DeepSpeed set-up with plain multi-CPU data parallelism. A torchrun job on CPUs gets
    # accelerate's own ACCELERATE_USE_CPU flag from kept.train.launch instead (gloo, MULTI_CPU).
    if PartialState._shared_state and not PartialState().use_distributed:
        # several runs in one process (tests, the pilot after a run): start from a clean accelerate state
        AcceleratorState._reset_state()
        GradientState._reset_state()
    # a collective that waits longer than collective_timeout_s (a peer on another node died) raises instead of
    # hanging; the launcher ends a job whose rank dies on its own node at once
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.collective_timeout_s))
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the world size
        kwargs_handlers=[timeout],
    )


def rank_world(accelerator: Any) -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed's where a process group exists, since accelerate 1.15
    reports one process (rank 0 on every rank) under DeepSpeed's CPU accelerator, which would give every rank the
    same batch and make each of them the main process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return accelerator.process_index, accelerator.num_processes


def _mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return value


def _check_pair(student: nn.Module, teacher: nn.Module, cfg: TrainConfig) -> None:
    s, t = student.config, teacher.config
    for key in ("vocab_size", "hidden_size"):
        if getattr(s, key) != getattr(t, key):
            raise CheckpointError(
                f"{cfg.student} vs {cfg.teacher}: {key} {getattr(s, key)} != {getattr(t, key)} (XKD needs an "
                "equal-size teacher)"
            )
    if cfg.objective == "xkd_h" and s.num_hidden_layers != t.num_hidden_layers:
        raise CheckpointError(
            f"{cfg.student} vs {cfg.teacher}: num_hidden_layers {s.num_hidden_layers} != {t.num_hidden_layers}"
        )


def configure_deepspeed(accelerator: Any, cfg: TrainConfig) -> dict[str, Any] | None:
    """Under DeepSpeed, write the run's batch, accumulation and clipping into the plugin's config before
    ``prepare``. accelerate fills ``train_micro_batch_size_per_gpu: auto`` only from a prepared DataLoader and the
    trainer prepares none (it reads the packed corpus itself), so without this ``prepare`` raises; and the profile's
    own ``gradient_clipping`` / ``gradient_accumulation_steps`` must not silently differ from the train config.
    Returns the DeepSpeed config (None without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["train_batch_size"] = cfg.batch_size * cfg.grad_accum * rank_world(accelerator)[1]
    ds["gradient_clipping"] = cfg.max_grad_norm  # DeepSpeed clips inside its step; 0 disables it
    return ds


def _register_head_for_zero3(accelerator: Any, module: StudentObjective) -> None:
    """Under DeepSpeed ZeRO-3 a parameter read outside its own module's forward must be registered with the module
    that reads it, or it is still partitioned (empty) when the chunked loss reads the LM-head weight."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        return
    import deepspeed  # type: ignore[import-not-found]

    deepspeed.zero.register_external_parameter(module, head_weight(module.student))


class _Resume:
    """work_dir/resume/: step-N/ (accelerate state + trainer_state.json + the log so far) and snapshots/ (hard
    links of the snapshots written so far, so they survive a rerun that deletes the declared outputs)."""

    def __init__(self, work_dir: Path, fingerprint: str) -> None:
        self.root = work_dir / "resume"
        self.fingerprint = fingerprint

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        best = None
        for path in self.root.glob("step-*"):
            meta_path = path / "trainer_state.json"
            if not meta_path.is_file():
                continue
            meta = _read_json(meta_path)
            if meta.get("fingerprint") != self.fingerprint:
                continue
            if best is None or meta["step"] > best[1]["step"]:
                best = (path, meta)
        return best

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def fit(
    cfg: TrainConfig,
    *,
    prepare_student: Callable[[nn.Module], None] | None = None,
    on_log: Callable[[int, nn.Module], dict[str, Any] | None] | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Run ``cfg``; ``prepare_student`` edits the loaded student before training (the pilot re-initialises its
    norms), ``on_log(step, student)`` adds fields to each log line. Returns the summary."""
    from accelerate.utils import set_seed

    from kept.models import load_model, model_type
    from kept.progress import Progress

    work = Path(cfg.work_dir)
    if export:
        check_output(cfg.output, inputs=[cfg.student])  # before training, not after it (kept.atomic's rule)
    accelerator = _new_accelerator(cfg)
    rank, world = rank_world(accelerator)
    main = rank == 0
    set_seed(cfg.seed)
    device = accelerator.device

    # ---- models and data -------------------------------------------------------------------------------------
    is_orion = model_type(cfg.student) == "orion"
    if cfg.export_format == "own":  # the student's own layout: Orion's, or its family's save_pretrained
        cfg = dataclasses.replace(cfg, export_format="orion" if is_orion else "source")
    if cfg.export_format == "llama" and is_orion:
        raise ConfigError(f"{cfg.student}: an Orion-format student can only be exported with export_format 'orion'")
    if cfg.export_format == "orion" and not is_orion:
        raise ConfigError(f"{cfg.student}: export_format 'orion' needs an Orion-format student")
    if cfg.export_format == "source" and is_orion:
        raise ConfigError(f"{cfg.student}: export_format 'source' writes save_pretrained's layout; an Orion-format "
                          "student needs export_format 'orion'")
    if cfg.trainable == "norms" and is_orion:
        raise ConfigError(f"{cfg.student}: trainable 'norms' (the pilot) needs a stock-Llama student")
    configure_deepspeed(accelerator, cfg)
    student = load_model(cfg.student, dtype=cfg.model_dtype)
    centered = student_is_centered(cfg.student)
    teacher = None
    teacher_capture = None
    if cfg.teacher and not (cfg.objective == "xkd_z" and cfg.teacher_cache):
        teacher = load_model(cfg.teacher, dtype=cfg.teacher_dtype, device=device)
        teacher.requires_grad_(False).eval()
        _check_pair(student, teacher, cfg)
        if cfg.objective == "xkd_h":
            teacher_capture = StreamCapture(teacher)
    corpus = PackedCorpus(cfg.corpus)
    corpus.check_vocab(student.config.vocab_size, where=cfg.student)
    length = cfg.max_length or corpus.max_length
    if length > corpus.max_length:
        raise ConfigError(f"train config: max_length {length} exceeds the corpus max_length {corpus.max_length}")
    cache = None
    if cfg.objective == "xkd_z" and cfg.teacher_cache:
        from kept.train.cache import TeacherCache

        cache = TeacherCache(cfg.teacher_cache)
        cache.check(corpus=corpus, temperature=cfg.temperature, vocab_size=student.config.vocab_size, length=length)

    if prepare_student is not None:
        prepare_student(student)
    _set_trainable(student, cfg)
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.config.use_cache = False
    student.train()
    module = StudentObjective(student, objective=cfg.objective, temperature=cfg.temperature,
                              chunk=cfg.kl_chunk_size, recompute=cfg.kl_recompute, centered=centered)
    _register_head_for_zero3(accelerator, module)
    fsdp2 = cfg.sharding == "fsdp2"
    if fsdp2:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
                accelerator.distributed_type.value not in ("MULTI_CPU", "MULTI_GPU"):
            raise ConfigError(f"train config: sharding 'fsdp2' needs the torchrun launcher (a process group without "
                              f"accelerate's own wrapping), this run is {accelerator.distributed_type.value}")
        from kept.train.fsdp import shard

        # sharded before the optimizer is built: the optimizer must hold the sharded parameters
        shard(module, list(decoder(student).layers), device_type=device.type, mixed_precision=cfg.mixed_precision)
    optimizer = torch.optim.AdamW(param_groups(student, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRSchedule(warmup=cfg.warmup_steps, total=cfg.steps, min_ratio=cfg.min_lr_ratio)
    )
    if not fsdp2:
        module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    # under fsdp2 accelerate keeps the process group, RNG state, gradient-accumulation scaling and clipping; the
    # weights, optimizer and scheduler state are saved sharded by kept.train.fsdp
    parity = None
    if cfg.stop_every:
        from kept.train.parity import ParityCheck

        parity = ParityCheck(cfg, corpus, length=length, device=device)
    schedule = BatchSchedule(corpus, seed=cfg.seed, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                             world_size=world, rank=rank, limit=None if parity is None else int(parity.indices[0]))
    tokens_per_step = schedule.global_batch * length

    # ---- resume ----------------------------------------------------------------------------------------------
    resume = _Resume(work, cfg.fingerprint())
    log_path = work / "train_log.jsonl"
    snapshots = work / "snapshots"
    start_step, elapsed_before = 0, 0.0
    kl0: float | None = None  # held-out KL before the first step (stop at parity)
    stopped_at: int | None = None  # the step at which the held-out KL reached the target
    found = resume.latest()
    if found is not None:
        state_dir, meta = found
        if meta.get("sharding", "none") != cfg.sharding:
            raise CheckpointError(f"{state_dir}: resume state saved with sharding {meta.get('sharding', 'none')!r}, "
                                  f"this run has {cfg.sharding!r}; delete {resume.root} to start over")
        saved_world = meta.get("world_size")  # absent in states written before it was recorded: not checked
        if saved_world is not None and int(saved_world) != world:
            # the data order, the per-rank RNG files and (FSDP2 / ZeRO) the optimizer shards are those of the saved
            # world size; resharding them is not supported, so say so rather than continue on another trajectory
            raise CheckpointError(
                f"{state_dir}: resume state saved by {saved_world} processes, this run has "
                f"{world}; rerun with {saved_world} processes, or delete {resume.root} to "
                "start over"
            )
        accelerator.load_state(str(state_dir))
        if fsdp2:
            from kept.train.fsdp import load_sharded

            load_sharded(state_dir, module, optimizer, scheduler)
        start_step, elapsed_before = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
        kl0 = meta.get("stop_kl0")
        stopped_at = meta.get("stopped_at")  # a kept state of a run that already stopped: nothing left to run
    unwrapped = accelerator.unwrap_model(module).student

    def measure_parity() -> float:
        return parity.measure(unwrapped, teacher=teacher, cache=cache, autocast=accelerator.autocast)

    if parity is not None and kl0 is None:
        kl0 = measure_parity()
    target = None if parity is None else parity_target(cfg, kl0)
    if main:
        work.mkdir(parents=True, exist_ok=True)
        if found is None:
            resume.clear()  # state of another configuration, or none
            for old_snapshot in snapshots.glob("step-*"):
                remove_output(old_snapshot)  # ours only: a foreign directory there is an error, not deleted
            log_path.write_text("")
        else:
            shutil.copyfile(found[0] / "train_log.jsonl", log_path)
            for kept_snap in sorted((resume.root / "snapshots").glob("step-*")):
                if int(kept_snap.name.split("-")[1]) <= start_step and not (snapshots / kept_snap.name).is_dir():
                    link_tree(kept_snap, snapshots / kept_snap.name)
        if export:
            snapshots.mkdir(exist_ok=True)  # a declared output even when snapshot_every is 0
    accelerator.wait_for_everyone()

    extra_info = {"objective": cfg.objective, "student": cfg.student, "teacher": cfg.teacher,
                  "teacher_cache": cfg.teacher_cache, "steps": cfg.steps, "centered_teacher_stream": centered,
                  "config": cfg.to_dict()}  # the recipe, for the model card

    def gathered_state() -> dict[str, torch.Tensor]:
        if fsdp2:
            from kept.train.fsdp import full_state_dict

            return full_state_dict(module)
        return accelerator.get_state_dict(module)

    def write_snapshot(step: int) -> None:
        state = gathered_state()
        if main:
            state = {k.removeprefix("student."): v for k, v in state.items()}
            out = snapshots / f"step-{step}"
            export_model(accelerator.unwrap_model(module).student, out, student_dir=cfg.student,
                         fmt=cfg.export_format, state_dict=state, num_shards=1, extra={**extra_info, "step": step})
            link_tree(out, resume.root / "snapshots" / out.name)
        accelerator.wait_for_everyone()

    def save_state(step: int, elapsed: float) -> None:
        tmp = resume.root / f".tmp-step-{step}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if fsdp2:
            from kept.train.fsdp import save_sharded

            save_sharded(tmp, module, optimizer, scheduler, main=main)
        accelerator.wait_for_everyone()  # every rank's files (its RNG state, its shards) are in tmp before the rename
        if main:
            shutil.copyfile(log_path, tmp / "train_log.jsonl")
            write_json(tmp / "trainer_state.json",
                       {"step": step, "fingerprint": resume.fingerprint, "elapsed_s": elapsed,
                        "world_size": world, "sharding": cfg.sharding,
                        "tokens": step * tokens_per_step, "stop_kl0": kl0, "stopped_at": stopped_at})
            final = resume.root / f"step-{step}"
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in resume.root.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    # ---- loop ------------------------------------------------------------------------------------------------
    metric = OBJECTIVE_METRIC[cfg.objective]
    bar = Progress(cfg.steps, initial=start_step, desc=cfg.objective, unit="step", per_unit=("tok", tokens_per_step),
                   enabled=cfg.progress and main)
    t0 = time.perf_counter()
    window_t, window_tokens = t0, 0
    first_loss = last_loss = None
    last_metric = None
    log_fh = open(log_path, "a", encoding="utf-8") if main else None
    try:
        for step in range(start_step, cfg.steps if stopped_at is None else start_step):
            loss_sum = torch.zeros((), device=device)
            metric_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                idx = schedule.indices(step, micro)
                ids = corpus.get(idx, length=length).to(device)
                with accelerator.accumulate(module):
                    if cache is not None:
                        t_out: dict[str, Any] | None = {"topk": cache.get(idx, length=length, device=device)}
                    elif teacher is not None:
                        with accelerator.autocast():
                            t_out = teacher_outputs(teacher, ids, objective=cfg.objective, capture=teacher_capture)
                    else:
                        t_out = None
                    out = module(ids, t_out)
                    accelerator.backward(out["loss"])
                    del t_out
                loss_sum += out["loss"].detach()
                metric_sum += out[metric]
            lr = scheduler.get_last_lr()[0]
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            window_tokens += tokens_per_step
            bar.update(1)

            heldout_kl = None
            if parity is not None and (done % cfg.stop_every == 0 or done == cfg.steps):
                heldout_kl = measure_parity()  # every rank: the same weights and data give the same decision
                if heldout_kl <= target:
                    stopped_at = done
            if done == 1 or done % cfg.log_every == 0 or done == cfg.steps or heldout_kl is not None:
                loss = _mean_over_ranks(loss_sum / cfg.grad_accum, world).item()
                value = _mean_over_ranks(metric_sum / cfg.grad_accum, world).item()
                if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                    grad_norm = grad_norm.full_tensor()
                gn = float(grad_norm) if grad_norm is not None else None  # clipped-before norm (same on all ranks)
                now = time.perf_counter()
                extra = on_log(done, accelerator.unwrap_model(module).student) if on_log else None
                if main:
                    entry = {"step": done, "loss": loss, metric: value, "lr": lr, "grad_norm": gn,
                             "tokens": done * tokens_per_step,
                             "tokens_per_s": window_tokens / max(now - window_t, 1e-9),
                             "elapsed_s": elapsed_before + now - t0}
                    if heldout_kl is not None:
                        entry.update(heldout_kl=heldout_kl, heldout_kl_target=target, stop_ceiling=cfg.steps)
                    entry.update(extra or {})
                    log_fh.write(json.dumps(entry) + "\n")
                    log_fh.flush()
                    bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", refresh=False)
                first_loss = loss if first_loss is None else first_loss
                last_loss, last_metric = loss, value
                window_t, window_tokens = now, 0
            if export and cfg.snapshot_every and done % cfg.snapshot_every == 0:
                if log_fh:
                    log_fh.flush()
                write_snapshot(done)
            if stopped_at is not None:
                break  # parity reached: no later snapshot, no state to resume
            if cfg.save_state_every and done % cfg.save_state_every == 0 and done < cfg.steps:
                if log_fh:
                    log_fh.flush()
                save_state(done, elapsed_before + time.perf_counter() - t0)
    finally:
        bar.close()
        if log_fh:
            log_fh.close()
    seconds = elapsed_before + time.perf_counter() - t0
    steps_done = cfg.steps if stopped_at is None else stopped_at
    lines = []
    if main and (start_step > 0 or parity is not None):  # lines from before a resume count too
        lines = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines and start_step > 0:
            first_loss, last_loss, last_metric = lines[0]["loss"], lines[-1]["loss"], lines[-1].get(metric)
    stop = None
    if parity is not None:
        checks = [[e["step"], e["heldout_kl"]] for e in lines if "heldout_kl" in e]
        stop = {"reason": "parity" if stopped_at is not None else "ceiling", "step": steps_done,
                "ceiling": cfg.steps, "every": cfg.stop_every, "heldout_sequences": cfg.stop_sequences,
                "kl_before": kl0, "target": target, "stop_kl": cfg.stop_kl, "stop_kl_share": cfg.stop_kl_share,
                "final_heldout_kl": checks[-1][1] if checks else None, "checks": checks}

    # ---- export ----------------------------------------------------------------------------------------------
    summary = {
        "objective": cfg.objective, "steps": steps_done, "resumed_from": start_step,
        "tokens": steps_done * tokens_per_step, "seconds": seconds,
        "tokens_per_s": max(0, steps_done - start_step) * tokens_per_step / max(seconds - elapsed_before, 1e-9),
        "first_logged_loss": first_loss, "final_loss": last_loss, f"final_{metric}": last_metric,
        "world_size": world, "output": cfg.output if export else None,
        "distributed_type": "FSDP2" if fsdp2 else accelerator.distributed_type.value,  # NO, MULTI_GPU, DEEPSPEED
        "zero_stage": getattr(getattr(accelerator.state, "deepspeed_plugin", None), "zero_stage", None),
        "steps_ceiling": cfg.steps, "tokens_ceiling": cfg.steps * tokens_per_step,
        "stop": stop,  # stop at parity: why and when the run ended (None: the check was off)
    }
    extra_info["steps"] = steps_done
    if export:
        state = gathered_state()
        if main:
            state = {k.removeprefix("student."): v for k, v in state.items()}
            export_model(accelerator.unwrap_model(module).student, cfg.output, student_dir=cfg.student,
                         fmt=cfg.export_format, state_dict=state, num_shards=cfg.num_shards,
                         extra={**extra_info, "summary": summary})
    accelerator.wait_for_everyone()
    if cfg.keep_resume:
        save_state(steps_done, seconds)
    elif main:
        resume.clear()
    summary.update(peak_memory(device))  # the main process's peaks over the whole run, exports included
    if main:
        write_json(work / "summary.json", summary)
    accelerator.wait_for_everyone()
    return summary


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.student`` with ``cfg.objective`` and write the final model to ``cfg.output`` (atomically),
    snapshots to ``work_dir/snapshots/step-N``, the per-step log to ``work_dir/train_log.jsonl``; resumes from
    ``work_dir/resume`` when a state of the same configuration is there. Returns the summary."""
    return fit(cfg)


