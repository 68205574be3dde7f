"""Training settings: one dataclass for UT, XKD-h and XKD-z (and toy-teacher pretraining)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kept.errors import ConfigError

OBJECTIVES = ("ut", "xkd_h", "xkd_z")
EXPORT_FORMATS = ("llama", "orion", "source", "own")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """One training run. UT, XKD-h and XKD-z differ only in ``objective`` (and ``teacher``), so runs built from
    the same settings share data order, steps, batch and learning-rate schedule."""

    objective: str  # "ut" | "xkd_h" | "xkd_z"
    student: str  # initial model dir: a toy teacher's start (Orion format or another family's) or stock Llama
    corpus: str  # packed corpus dir (manifest.json + shards/*.npy)
    output: str  # final model dir, written atomically
    work_dir: str  # snapshots/step-N/, resume/, train_log.jsonl
    teacher: str | None = None  # teacher dir, any family; required by xkd_h / xkd_z unless teacher_cache is given
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    warmup_steps: int = 10  # linear warmup from lr/warmup_steps to lr
    weight_decay: float = 0.1  # AdamW decay on matrices and embeddings only (not on norm weights or biases)
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0  # data order and any randomness of the run
    snapshot_every: int = 0  # stock-Llama snapshots for recovery curves (0 = none)
    save_state_every: int = 0  # resumable state (0 = only at the end)
    export_format: str = "llama"  # "orion" / "source" (the student's own family layout) for toy teachers; "own":
    # whichever of the two the student is in (the regime control: a teacher trained further, unconverted)
    mixed_precision: str = "no"  # accelerate autocast: "no" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    temperature: float = 1.0  # XKD-z: KL between softmax(z/T) distributions, scaled by T^2
    kl_chunk_size: int = 1024  # tokens per chunk of the lm_head projection (XKD-z and UT)
    teacher_cache: str | None = None  # offline XKD-z: dir written by cache_teacher (replaces the teacher)
    log_every: int = 10
    # --- additions beyond the agreed minimum ---
    kl_recompute: bool = True  # recompute each chunk's logits in backward (False: form gradients in forward,
    # holding an extra (V, d) float32 buffer until backward; fewer matmuls)
    model_dtype: str = "float32"  # dtype of the trained weights (use mixed_precision for bf16 compute)
    teacher_dtype: str = "float32"  # dtype of the frozen teacher
    max_length: int | None = None  # crop corpus sequences to this length (None = corpus max_length)
    num_shards: int = 2  # export: safetensors / .bin shards
    keep_resume: bool = False  # keep work_dir/resume after a successful run
    trainable: str = "all"  # "all" | "norms" (Appendix-A pilot: only the RMSNorm weights learn)
    progress: bool = True  # progress lines (kept.progress: steps, tok/s, ETA) in the main process's log
    # --- stop at parity (the fast path): end the run once the held-out KL to the teacher reaches a target ---
    stop_every: int = 0  # check the held-out KL every N optimizer steps (0 = never stop early; steps is the ceiling)
    stop_kl: float | None = None  # absolute target, nats/token (KL(teacher || student) at T=1)
    stop_kl_share: float | None = None  # target as a share of the KL before training (the starting gap)
    stop_sequences: int = 16  # held-out sequences: the training corpus's last N, never trained on when stop_every > 0
    sharding: str = "none"  # "fsdp2": torch fully_shard over all ranks (kept.train.fsdp); needs a multi-process
    # launcher (torchrun). "none": DDP under torchrun, or whatever the accelerate profile sets up
    collective_timeout_s: int = 600  # multi-process runs: a collective that waits this long fails the job (a rank
    # that died on another node); the launcher ends a job on its own node's failures at once

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the offending key."""

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"train config: key {key!r} = {getattr(self, key)!r}: {why}")

        if self.objective not in OBJECTIVES:
            raise bad("objective", f"expected one of {OBJECTIVES}")
        if self.export_format not in EXPORT_FORMATS:
            raise bad("export_format", f"expected one of {EXPORT_FORMATS}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"expected one of {MIXED_PRECISION}")
        for key in ("model_dtype", "teacher_dtype"):
            if getattr(self, key) not in DTYPES:
                raise bad(key, f"expected one of {DTYPES}")
        for key in ("steps", "batch_size", "grad_accum", "kl_chunk_size", "log_every", "num_shards"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise bad(key, "must be a positive integer")
        if self.sharding not in ("none", "fsdp2"):
            raise bad("sharding", "expected 'none' or 'fsdp2'")
        if not isinstance(self.collective_timeout_s, int) or self.collective_timeout_s < 1:
            raise bad("collective_timeout_s", "must be a positive integer (seconds)")
        for key in ("warmup_steps", "snapshot_every", "save_state_every", "stop_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise bad(key, "must be a non-negative integer")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise bad("weight_decay" if self.weight_decay < 0 else "max_grad_norm", "must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", "must be two numbers in [0, 1)")
        if not self.temperature > 0:
            raise bad("temperature", "must be > 0")
        if self.max_length is not None and self.max_length < 2:
            raise bad("max_length", "must be >= 2 or null")
        if self.trainable not in ("all", "norms"):
            raise bad("trainable", "expected 'all' or 'norms'")
        if self.objective == "ut" and (self.teacher or self.teacher_cache):
            raise bad("teacher", "objective 'ut' takes no teacher")
        if self.objective == "xkd_h" and not self.teacher:
            raise bad("teacher", "objective 'xkd_h' needs a teacher dir")
        if self.objective == "xkd_h" and self.teacher_cache:
            raise bad("teacher_cache", "a top-k cache serves xkd_z only")
        if self.objective == "xkd_z" and not (self.teacher or self.teacher_cache):
            raise bad("teacher", "objective 'xkd_z' needs a teacher dir or a teacher_cache")
        if self.stop_every:
            if self.stop_kl is None and self.stop_kl_share is None:
                raise bad("stop_every", "stopping at parity needs a target: stop_kl and/or stop_kl_share")
            if not (self.teacher or self.teacher_cache):
                raise bad("stop_every", "stopping at parity measures the KL to a teacher: give teacher or teacher_cache")
            if not isinstance(self.stop_sequences, int) or self.stop_sequences < 1:
                raise bad("stop_sequences", "must be a positive integer")
        if self.stop_kl is not None and not self.stop_kl >= 0:
            raise bad("stop_kl", "must be >= 0 or null")
        if self.stop_kl_share is not None and not 0.0 < self.stop_kl_share < 1.0:
            raise bad("stop_kl_share", "must be in (0, 1) or null")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"train config: unknown key(s) {unknown}")
        return cls(**data)

    def fingerprint(self) -> str:
        """Hash of every setting that shapes the trajectory (not paths of outputs, logging or checkpoint
        cadence), so resumable state is only reused by a run that would have produced it."""
        skip = {"output", "work_dir", "log_every", "snapshot_every", "save_state_every", "keep_resume",
                "progress", "num_shards", "export_format", "collective_timeout_s", "sharding"}
        # where a run stops (stop_every and its targets) does not change the steps it runs, but holding out the
        # corpus tail changes the data order; a run without the check hashes exactly as before these keys existed
        skip |= {"stop_every", "stop_kl", "stop_kl_share", "stop_sequences"}
        d = {k: v for k, v in self.to_dict().items() if k not in skip}
        if self.stop_every:
            d["heldout_sequences"] = self.stop_sequences
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]



# settings that must be equal across methods for a matched comparison (config train.<key>)
SHARED_KEYS = ("steps", "batch_size", "grad_accum", "max_length", "snapshot_every", "save_state_every")


def method_settings(train: dict[str, Any], method: str, *, seed: int,
                    variant_train: dict[str, Any] | None = None) -> dict[str, Any]:
    """TrainConfig fields of one method from the workflow config's ``train`` section: ``common``, then the
    method's non-null ``per_method`` overrides, then those of the variant's own ``variants.<name>.train.per_method``
    (``variant_train``), then the shared budget (:data:`SHARED_KEYS`) and ``seed``. The train rule and the
    width-faithful rehearsal (bench/bench_rehearsal.py) both build their runs with it."""
    settings = dict(train["common"])
    for section in (train, variant_train or {}):
        overrides = (section.get("per_method") or {}).get(method) or {}
        settings.update({key: value for key, value in overrides.items() if value is not None})
    settings.update({key: train[key] for key in SHARED_KEYS})
    settings["betas"] = list(settings["betas"])
    settings["seed"] = seed
    if settings.get("sharding") == "none":
        # the default changes no output: left out, so the train rule's params (and the jobs Snakemake reruns for
        # them) stay those of runs made before the key existed
        del settings["sharding"]
    return settings


def pilot_settings(train: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """PilotConfig fields (all but the paths) from the workflow config's ``train`` section: ``train.pilot`` (less
    its ``variants``) and the run-wide settings it shares with the trainings. The pilot rule and the rehearsal
    (bench/bench_rehearsal.py) both build the pilot with it (kept.train.pilot.PilotConfig)."""
    common = train["common"]
    settings = {k: v for k, v in train["pilot"].items() if k != "variants"}
    settings.update(seed=seed, max_length=train["max_length"], kl_chunk_size=common["kl_chunk_size"],
                    model_dtype=common["model_dtype"], teacher_dtype=common["teacher_dtype"],
                    mixed_precision=common["mixed_precision"],
                    gradient_checkpointing=common.get("gradient_checkpointing", False))
    return settings
