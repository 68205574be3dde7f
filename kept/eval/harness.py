"""lm-eval suites (H6, KoMMLU, recovery-curve subsets) on any grid model.

The model is loaded once with :func:`kept.models.load_model` and :func:`kept.models.load_tokenizer` and wrapped
in lm-eval's own ``HFLM``, so Orion teachers (StableLm runtime) and Llama students take the same path. Tasks,
shots and metrics come from the caller (the workflow config), so the toy suite and the Open LLM Leaderboard
tasks run through the same code.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kept.atomic import atomic_dir, check_output, write_json
from kept.errors import ConfigError, KeptError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """One column of a harness summary."""

    name: str  # column label, e.g. "ARC"
    task: str  # lm-eval task or group name, e.g. "arc_challenge", "mmlu", "toy_arc"
    shots: int  # few-shot examples (set on every leaf task of a group)
    metric: str  # lm-eval result key, e.g. "acc_norm,none", "exact_match,strict-match"
    chance: float | None = None  # score of random guessing, for tables and plots
    average: str = "group"  # groups only: "group" = lm-eval's own aggregate, "macro" = mean of leaf tasks

    @classmethod
    def from_dict(cls, obj: dict[str, Any], *, where: str = "task") -> "TaskSpec":
        known = {"name", "task", "shots", "metric", "chance", "average"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}")
        for key in ("name", "task", "shots", "metric"):
            if key not in obj:
                raise ConfigError(f"{where}: missing key {key!r}")
        spec = cls(**obj)
        if not isinstance(spec.shots, int) or spec.shots < 0:
            raise ConfigError(f"{where}: shots must be a non-negative integer, found {spec.shots!r}")
        if "," not in spec.metric:
            raise ConfigError(f"{where}: metric {spec.metric!r} must be an lm-eval key 'metric,filter'")
        if spec.average not in ("group", "macro"):
            raise ConfigError(f"{where}: average must be 'group' or 'macro', found {spec.average!r}")
        return spec


@dataclass
class HarnessConfig:
    """One lm-eval run of one model on one suite."""

    model: str  # model directory (Orion or stock Llama)
    output: str  # summary JSON (docs/architecture.md "Harness summary")
    raw_dir: str  # lm-eval results.json and per-sample logs
    suite: str  # "h6", "kommlu", "recovery", ...
    tasks: list[TaskSpec]
    model_name: str = ""  # grid label written into the summary
    variant: str = ""
    task_dir: str | None = None  # extra directory of lm-eval task YAMLs (the toy suites)
    include_defaults: bool = True  # index lm-eval's built-in tasks (12 s; not needed for toy tasks)
    batch_size: int | str = "auto"
    max_batch_size: int = 64
    limit: int | float | None = None  # items per task (None = all; never set for reported numbers)
    log_samples: bool = True
    bootstrap_iters: int = 100000
    seed: int = 1234
    dtype: str | None = None
    device: str = "cpu"
    add_bos_token: bool | None = None  # None = the tokenizer's own default
    micro_macro: bool = False  # add top-level micro/macro averages over leaf tasks (KoMMLU)
    cache_templates: bool = True  # compile lm-eval's prompt templates once (same prompts, much less CPU)
    extra: dict[str, Any] = field(default_factory=dict)  # extra summary fields (recovery: method, step)


def cache_prompt_templates() -> None:
    """Compile each of lm-eval's Jinja prompt templates once. lm-eval 0.4.13's ``utils.apply_template``
    compiles the template string again for every document, field and few-shot example (~1 ms each), which
    dominates small-model runs; the cached version renders with the same environment and gives the same text."""
    import functools

    import lm_eval.utils as lm_utils

    if getattr(lm_utils.apply_template, "_kept_cached", False):
        return
    compile_template = functools.lru_cache(maxsize=4096)(lm_utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compile_template(template).render(**doc)

    apply_template._kept_cached = True  # type: ignore[attr-defined]
    lm_utils.apply_template = apply_template


def _task_manager(task_dir: str | None, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    if task_dir is not None and not Path(task_dir).is_dir():
        raise KeptError(f"{task_dir}: lm-eval task directory does not exist")
    if task_dir is None and not include_defaults:
        raise ConfigError("no task source: give a task directory or include lm-eval's built-in tasks")
    return TaskManager(include_path=task_dir, include_defaults=include_defaults)


def _leaves(name: str, group_map: dict[str, list[str]]) -> list[str]:
    """Leaf task names under ``name`` (itself if it is a task)."""
    if name not in group_map:
        return [name]
    out: list[str] = []
    for child in group_map[name]:
        out.extend(_leaves(child, group_map))
    return out


def load_tasks(tm: Any, specs: list[TaskSpec]) -> list[Any]:
    """lm-eval Task/Group objects for ``specs``, with each leaf task's ``num_fewshot`` set from its spec."""
    objs = []
    for spec in specs:
        try:
            loaded = tm.load([spec.task])
        except (KeyError, ValueError) as exc:
            raise KeptError(f"lm-eval task {spec.task!r} (column {spec.name!r}): cannot load ({exc})") from exc
        groups = loaded.get("groups", {})
        top = groups[spec.task] if spec.task in groups else loaded["tasks"].get(spec.task)
        if top is None:
            raise KeptError(f"lm-eval task {spec.task!r} (column {spec.name!r}): not found after loading")
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=spec.shots)
        objs.append(top)
    return objs


def precache_tasks(*, tasks: list[TaskSpec], output: str | Path, task_dir: str | None = None,
                   include_defaults: bool = True) -> dict[str, Any]:
    """Load the datasets of ``tasks`` through lm-eval's own task loading, so the Hugging Face caches hold exactly
    what the harness reads later, and write ``output/manifest.json`` last (per leaf task: its column, dataset
    and split sizes). The caller points the caches into ``output`` first and allows the network (the fetch
    rule's script: :func:`kept.smk.log_to_rule` with ``network=True, hf_cache=output``); harness jobs on compute
    nodes then read the same caches with the hub offline."""
    import lm_eval

    tm = _task_manager(task_dir, include_defaults)
    leaves: dict[str, Any] = {}
    for spec in tasks:
        try:
            loaded = tm.load([spec.task])
        except (KeyError, ValueError, OSError) as exc:
            raise KeptError(f"lm-eval task {spec.task!r} (column {spec.name!r}): cannot load ({exc})") from exc
        if not loaded["tasks"]:
            raise KeptError(f"lm-eval task {spec.task!r} (column {spec.name!r}): no tasks after loading")
        for name, task in loaded["tasks"].items():
            data = getattr(task, "dataset", None) or {}
            leaves[str(name)] = {"column": spec.name, "dataset_path": task.config.dataset_path,
                                 "dataset_name": task.config.dataset_name,
                                 "splits": {str(k): len(v) for k, v in data.items()}}
    manifest = {"tasks": leaves, "lm_eval_version": getattr(lm_eval, "__version__", "unknown")}
    Path(output).mkdir(parents=True, exist_ok=True)
    write_json(Path(output) / "manifest.json", manifest)
    return manifest


def _stderr_key(metric: str) -> str:
    name, filt = metric.split(",", 1)
    return f"{name}_stderr,{filt}"


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def summarize(results: dict[str, Any], specs: list[TaskSpec], *, micro_macro: bool = False) -> dict[str, Any]:
    """The summary columns (and averages) of an lm-eval results dict. A missing metric is a KeptError naming
    the task, the metric and the keys lm-eval did report."""
    res = results.get("results", {})
    group_map = results.get("group_subtasks", {}) or {}
    n_samples = results.get("n-samples", {}) or {}
    columns = []
    all_leaves: list[tuple[str, float, int]] = []
    for spec in specs:
        leaves = _leaves(spec.task, group_map)
        leaf_vals: list[tuple[str, float, int]] = []
        for leaf in leaves:
            if leaf not in res or spec.metric not in res[leaf]:
                have = sorted(k for k in res.get(leaf, {}) if "," in k and "stderr" not in k)
                raise KeptError(f"lm-eval results: task {leaf!r} has no metric {spec.metric!r} (has {have})")
            v = _finite(res[leaf][spec.metric])
            if v is None:
                raise KeptError(f"lm-eval results: task {leaf!r} metric {spec.metric!r} is not a number")
            n = int((n_samples.get(leaf) or {}).get("effective", 0))
            leaf_vals.append((leaf, v, n))
        all_leaves.extend(leaf_vals)
        total = sum(n for _, _, n in leaf_vals)
        macro = sum(v for _, v, _ in leaf_vals) / len(leaf_vals)
        micro = sum(v * n for _, v, n in leaf_vals) / total if total else macro
        col: dict[str, Any] = {
            "name": spec.name, "task": spec.task, "shots": spec.shots, "metric": spec.metric,
            "chance": spec.chance, "n": total,
        }
        if spec.task in group_map:
            group_val = _finite(res.get(spec.task, {}).get(spec.metric))
            col["value"] = macro if spec.average == "macro" or group_val is None else group_val
            col["average"] = spec.average
            col["micro"], col["macro"], col["subtasks"] = micro, macro, len(leaf_vals)
            col["stderr"] = _finite(res.get(spec.task, {}).get(_stderr_key(spec.metric)))
        else:
            col["value"] = leaf_vals[0][1]
            col["stderr"] = _finite(res[spec.task].get(_stderr_key(spec.metric)))
        columns.append(col)
    summary: dict[str, Any] = {
        "columns": columns,
        "average": sum(c["value"] for c in columns) / len(columns),
    }
    if micro_macro:
        total = sum(n for _, _, n in all_leaves)
        summary["macro"] = sum(v for _, v, _ in all_leaves) / len(all_leaves)
        summary["micro"] = sum(v * n for _, v, n in all_leaves) / total if total else summary["macro"]
        summary["subtasks"] = {leaf: v for leaf, v, _ in all_leaves}
    return summary


def _jsonable(obj: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def evaluate_loaded(lm: Any, tm: Any, cfg: HarnessConfig) -> dict[str, Any]:
    """Run ``cfg.tasks`` on an already wrapped model ``lm`` (HFLM); write the raw directory, then the
    summary. Returns the summary."""
    import lm_eval
    from lm_eval import simple_evaluate

    if cfg.cache_templates:
        cache_prompt_templates()
    objs = load_tasks(tm, cfg.tasks)
    results = simple_evaluate(
        model=lm,
        tasks=objs,
        task_manager=tm,
        limit=cfg.limit,
        log_samples=cfg.log_samples,
        bootstrap_iters=cfg.bootstrap_iters,
        random_seed=cfg.seed,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed,
    )
    if results is None:
        raise KeptError(f"{cfg.model}: lm-eval returned no results")
    samples = results.pop("samples", None) or {}
    summary = {
        "model": cfg.model_name,
        "variant": cfg.variant,
        "suite": cfg.suite,
        "limit": cfg.limit,
        **summarize(results, cfg.tasks, micro_macro=cfg.micro_macro),
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
        **cfg.extra,
    }
    with atomic_dir(cfg.raw_dir) as tmp:
        (tmp / "results.json").write_text(
            json.dumps(_jsonable(results), indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        for task_name, rows in samples.items():
            with open(tmp / f"samples_{_safe_name(task_name)}.jsonl", "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(_jsonable(row), ensure_ascii=False) + "\n")
    write_json(cfg.output, summary)
    return summary


def wrap_model(loaded: Any, cfg: HarnessConfig) -> Any:
    """lm-eval's HFLM over an already loaded grid model and its tokenizer."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=loaded.model,
        tokenizer=loaded.tokenizer,
        batch_size=cfg.batch_size,
        max_batch_size=cfg.max_batch_size,
        add_bos_token=cfg.add_bos_token,
        trust_remote_code=False,
    )


def run_harness(cfg: HarnessConfig) -> dict[str, Any]:
    """Evaluate one model on ``cfg.tasks``: ``cfg.raw_dir`` gets lm-eval's results and per-sample logs,
    ``cfg.output`` the summary (written last, so its presence means the run finished)."""
    from kept.eval.common import load_eval_model

    if not cfg.tasks:
        raise ConfigError(f"suite {cfg.suite!r}: no tasks configured")
    check_output(cfg.raw_dir, inputs=[cfg.model])  # before the evaluation, not after it (kept.atomic's rule)
    tm = _task_manager(cfg.task_dir, cfg.include_defaults)
    loaded = load_eval_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    return evaluate_loaded(wrap_model(loaded, cfg), tm, cfg)


@dataclass
class RecoveryConfig:
    """A harness subset on training snapshots of one method (the paper's Figure 2)."""

    snapshots: str  # directory of step-{N}/ stock-Llama snapshots
    outputs: dict[int, str]  # step -> summary JSON
    raw_dir: str  # lm-eval results and per-sample logs of step N go to raw_dir/step-{N}/
    tasks: list[TaskSpec]
    method: str = ""
    variant: str = ""
    harness: dict[str, Any] = field(default_factory=dict)  # HarnessConfig settings (batch_size, limit, ...)


def run_recovery(cfg: RecoveryConfig) -> list[dict[str, Any]]:
    """Evaluate the requested snapshots with the harness subset in one process (one import, one task index);
    each summary has the format of h6.json plus ``method`` and ``step``, written atomically after its raw
    directory."""
    from kept.eval.common import load_eval_model

    if not cfg.tasks:
        raise ConfigError("recovery: no tasks configured")
    snaps = Path(cfg.snapshots)
    for step in cfg.outputs:
        if not (snaps / f"step-{step}").is_dir():
            raise KeptError(f"{snaps / f'step-{step}'}: snapshot does not exist")
    opts = dict(cfg.harness)
    tm = _task_manager(opts.pop("task_dir", None), opts.pop("include_defaults", True))
    summaries = []
    for step, output in sorted(cfg.outputs.items()):
        out = Path(output)
        hc = HarnessConfig(
            model=str(snaps / f"step-{step}"), output=str(out), raw_dir=str(Path(cfg.raw_dir) / f"step-{step}"),
            suite="recovery", tasks=cfg.tasks, model_name=cfg.method, variant=cfg.variant,
            extra={"method": cfg.method, "step": step}, **opts,
        )
        log.info("recovery %s/%s step %d", cfg.variant, cfg.method, step)
        loaded = load_eval_model(hc.model, dtype=hc.dtype, device=hc.device)
        summaries.append(evaluate_loaded(wrap_model(loaded, hc), tm, hc))
        del loaded
    return summaries
