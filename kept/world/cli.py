"""``kept world``, ``kept train-tokenizer``, ``kept eval-data``, ``kept pretrain``: the toy world's steps.

Every field of the step's settings dataclass is an option (``--n-people 40``); dict and list fields take JSON
(``--quiz-weights '{"arc": 2}'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from kept.errors import ConfigError


def _add_fields(parser: argparse.ArgumentParser, cls: type, *, required: tuple[str, ...] = (),
                skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        if isinstance(default, (dict, list)):
            parser.add_argument(flag, type=json.loads, default=None, help=f"JSON (default {json.dumps(default)})")
        elif isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        else:
            typ = type(default) if default is not None else str
            parser.add_argument(flag, type=typ, default=None, required=f.name in required,
                                help=f"default {default}" if default is not None else None)


def _build(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and v is not None}
    kwargs.update(fixed)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def world_cli(argv: list[str]) -> int:
    """Generate the world: ``world.json`` and ``text/{domain}.jsonl`` under ``--output``."""
    from kept.world.generator import WorldSpec
    from kept.world.render import write_world

    p = argparse.ArgumentParser(prog="kept world", description=world_cli.__doc__)
    p.add_argument("--output", required=True)
    _add_fields(p, WorldSpec)
    a = p.parse_args(argv)
    print(json.dumps(write_world(spec=_build(WorldSpec, a), output=a.output)))
    return 0


def tokenizer_cli(argv: list[str]) -> int:
    """Train the SentencePiece tokenizer on a world's text."""
    from pathlib import Path

    from kept.world.render import DOMAINS
    from kept.world.tokenizer import train_tokenizer

    p = argparse.ArgumentParser(prog="kept train-tokenizer", description=tokenizer_cli.__doc__)
    p.add_argument("--world", required=True, help="world directory (text/{domain}.jsonl)")
    p.add_argument("--output", required=True, help="tokenizer.model to write")
    p.add_argument("--vocab-size", type=int, default=3000)
    a = p.parse_args(argv)
    files = [Path(a.world) / "text" / f"{d}.jsonl" for d in DOMAINS]
    train_tokenizer(text_files=files, output=a.output, vocab_size=a.vocab_size)
    return 0


def eval_data_cli(argv: list[str]) -> int:
    """Write the toy evaluation suites."""
    from kept.world.evaldata import EvalDataConfig, write_eval_data

    p = argparse.ArgumentParser(prog="kept eval-data", description=eval_data_cli.__doc__)
    _add_fields(p, EvalDataConfig, required=("world", "tokenizer", "output"))
    a = p.parse_args(argv)
    print(json.dumps(write_eval_data(_build(EvalDataConfig, a))["tasks"]))
    return 0


def pretrain_cli(argv: list[str]) -> int:
    """Pretrain one toy teacher in Orion's format."""
    import torch

    from kept.world.pretrain import PretrainConfig, pretrain_teacher

    p = argparse.ArgumentParser(prog="kept pretrain", description=pretrain_cli.__doc__)
    _add_fields(p, PretrainConfig, required=("role", "world", "tokenizer", "output", "work_dir"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    s = pretrain_teacher(_build(PretrainConfig, a))
    print(json.dumps({k: s.get(k) for k in ("final_loss", "tokens", "seconds", "tokens_per_s")}))
    return 0
