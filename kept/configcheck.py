"""``kept check-config FILE...``: the workflow config files, parsed and merged as Snakemake's ``--configfile`` does,
then validated against ``schemas/config.schema.yaml``, with every error naming its file.

Snakemake parses ``--configfile`` files before the workflow's own code runs, and its message for a file that is
not valid YAML names neither the file nor the line. This command does: ``kept check-config config.yaml my.yaml``
says which file, line and column is broken, or which file set a key the schema rejects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kept.errors import ConfigError

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """One config file (YAML or JSON) as a dict; a :class:`ConfigError` naming the file (and line) if it is not."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys at top level, found {type(data).__name__}")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged key by key into a copy of ``base`` (nested mappings merged, anything else replaced), as
    Snakemake merges later ``--configfile`` files into earlier ones."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_by(files: list[tuple[Path, dict[str, Any]]], keys: list[Any]) -> Path | None:
    """The last file that sets the key path ``keys`` (where a merged value came from)."""
    found = None
    for path, data in files:
        node: Any = data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            found = path
    return found


def check_config(paths: list[str | Path], *, schema: str | Path = SCHEMA) -> dict[str, Any]:
    """Parse, merge and validate config files; return the merged config or raise a :class:`ConfigError` naming
    the file (and key or line) at fault."""
    import jsonschema
    import yaml

    if not paths:
        raise ConfigError("check-config: give at least one config file")
    files = [(Path(p), load_config_file(p)) for p in paths]
    merged: dict[str, Any] = {}
    for _, data in files:
        merged = merge(merged, data)
    spec = yaml.safe_load(Path(schema).read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(spec)(spec)
    errors = sorted(validator.iter_errors(merged), key=lambda e: [str(k) for k in e.absolute_path])
    if errors:
        err = errors[0]
        keys = list(err.absolute_path)
        if err.validator == "additionalProperties":  # the offending key is in the message, not the path
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            keys = keys + extra[:1]
        origin = _set_by(files, keys) or ", ".join(str(p) for p, _ in files)
        dotted = ".".join(str(k) for k in keys) or "(top level)"
        raise ConfigError(f"{origin}: key {dotted}: {err.message}")
    return merged


def cli(argv: list[str]) -> int:
    """``kept check-config FILE [FILE ...]``"""
    ap = argparse.ArgumentParser(prog="kept check-config", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="config files in --configfile order (later ones merge into earlier)")
    ap.add_argument("--schema", default=str(SCHEMA), help="JSON schema (default: the workflow's)")
    ap.add_argument("--print", action="store_true", help="print the merged config as JSON")
    args = ap.parse_args(argv)
    merged = check_config(args.files, schema=args.schema)
    if args.print:
        print(json.dumps(merged, indent=2, sort_keys=True))
    else:
        print(f"config OK: {' + '.join(args.files)}")
    return 0
