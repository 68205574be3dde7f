"""``kept train``, ``kept cache-teacher`` and ``kept pilot``: command-line faces of the training functions.

Every dataclass field is an option (``--kl-chunk-size 512``); ``--config FILE.json`` reads them from a JSON object
first (what the multi-process launcher passes), and options given after it override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from kept.errors import ConfigError


def _parser_for(cls: type, description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    ap.add_argument("--config", help="JSON file with the settings (options override it)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        opt = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
        if base is bool:
            ap.add_argument(opt, dest=f.name, type=_bool, metavar="{true,false}")
        elif typing.get_origin(base) is tuple:
            ap.add_argument(opt, dest=f.name, type=float, nargs=len(typing.get_args(base)))
        else:
            ap.add_argument(opt, dest=f.name, type=base if base in (int, float) else str)
    return ap


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _settings(ap: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    ns = vars(ap.parse_args(argv))
    data: dict[str, Any] = {}
    config = ns.pop("config", None)
    if config:
        path = Path(config)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable settings file ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
    data.update(ns)
    return data


def _make(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown setting(s) {unknown}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in data and f.default is dataclasses.MISSING)
    if missing:
        raise ConfigError(f"{cls.__name__}: missing required setting(s) {missing}")
    return cls(**data)


def _log_info() -> None:
    """Log INFO lines (progress, kept.progress) to stderr: under a launcher, stderr is the rule log."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")


def train_cli(argv: list[str]) -> int:
    _log_info()
    from kept.train.config import TrainConfig
    from kept.train.trainer import train

    cfg = _make(TrainConfig, _settings(_parser_for(TrainConfig, "UT / XKD-h / XKD-z training"), argv))
    summary = train(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def cache_cli(argv: list[str]) -> int:
    _log_info()
    from kept.train.cache import CacheConfig, cache_teacher

    cfg = _make(CacheConfig, _settings(_parser_for(CacheConfig, "cache the teacher's top-k log-probs"), argv))
    print(json.dumps(cache_teacher(cfg), indent=2))
    return 0


def pilot_cli(argv: list[str]) -> int:
    _log_info()
    from kept.train.pilot import PilotConfig, run_pilot

    cfg = _make(PilotConfig, _settings(_parser_for(PilotConfig, "Appendix-A pilot: learn only the RMSNorm weights"), argv))
    print(json.dumps(run_pilot(cfg), indent=2))
    return 0
