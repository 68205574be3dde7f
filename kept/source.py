"""Where a teacher checkpoint comes from: a local directory, or a hub repository at a pinned revision.

Hub snapshots hold the weights, config, tokenizer files and model card only (:data:`ALLOW_PATTERNS`); the repository's
``.py`` files (Orion's remote code) are never downloaded, let alone run. The resolved commit is recorded in
``SOURCE.json`` next to the files.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

from kept.atomic import atomic_dir
from kept.errors import ConfigError

log = logging.getLogger(__name__)

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",  # the source's model card: license and languages carried into the converted card (kept.card)
    "LICENSE*",
]
IGNORE_PATTERNS = ["*.py", "*.pyc", "*.ipynb"]
SHA = re.compile(r"^[0-9a-f]{40}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def fetch_source(*, repo: str, revision: str, output: str | Path) -> dict[str, Any]:
    """Download ``repo`` at ``revision`` (weights/config/tokenizer only) into ``output``, atomically.

    A branch or tag is resolved to its commit and recorded, with a warning: pin a 40-hex SHA for
    reproducible results. Returns the SOURCE.json record.
    """
    with atomic_dir(output) as tmp:
        sha = hub_snapshot(repo=repo, revision=revision, local_dir=tmp, allow_patterns=ALLOW_PATTERNS)
        record = {"repo": repo, "revision": revision, "commit": sha, "pinned": bool(SHA.match(revision)),
                  "allow_patterns": ALLOW_PATTERNS}
        (tmp / "SOURCE.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


Resolver = Callable[[str, str, str], str]  # (repo, revision, repo_type) -> commit SHA
Downloader = Callable[..., Any]  # huggingface_hub.snapshot_download's keyword interface


def hub_snapshot(*, repo: str, revision: str, local_dir: str | Path, allow_patterns: list[str],
                 repo_type: str = "model", resolve: Resolver | None = None,
                 download: Downloader | None = None) -> str:
    """Download the files of hub repo ``repo`` matching ``allow_patterns`` at ``revision`` into ``local_dir``
    (plain files, no hub cache), never any ``.py``; return the commit it resolved ``revision`` to (a branch or
    tag is logged as not pinned). ``resolve`` and ``download`` default to huggingface_hub (``HfApi`` info and
    ``snapshot_download``); tests pass local stand-ins, so the rest of the fetch runs offline."""
    if not HUB_ID.match(repo):
        raise ConfigError(f"hub repository {repo!r} is not of the form owner/name")
    if not revision:
        raise ConfigError(f"{repo}: a revision is required")
    if resolve is None or download is None:
        from huggingface_hub import HfApi, snapshot_download

        def hub_resolve(repo: str, revision: str, repo_type: str) -> str:
            api = HfApi()
            info = api.dataset_info if repo_type == "dataset" else api.model_info
            return info(repo, revision=revision).sha

        resolve, download = resolve or hub_resolve, download or snapshot_download
    sha = resolve(repo, revision, repo_type)
    if not SHA.match(revision):
        log.warning("%s: revision %r is not a commit SHA; resolved to %s (pin it for reproducibility)",
                    repo, revision, sha)
    local = Path(local_dir)
    download(repo_id=repo, repo_type=repo_type, revision=sha, local_dir=str(local), allow_patterns=allow_patterns,
             ignore_patterns=IGNORE_PATTERNS)
    for py in local.rglob("*.py"):  # belt and braces: nothing executable travels with the files
        py.unlink()
    cache = local / ".cache"
    if cache.is_dir():
        import shutil

        shutil.rmtree(cache)
    return sha


def parse_hub_spec(spec: str) -> tuple[str, str] | None:
    """``"owner/name@revision"`` -> (repo, revision); None if ``spec`` is not of that form."""
    if "@" not in spec:
        return None
    repo, _, revision = spec.partition("@")
    if not HUB_ID.match(repo) or not revision:
        return None
    return repo, revision


def resolve_source(spec: str | Path, *, cache_dir: str | Path) -> Path:
    """A local Orion directory as given, or the snapshot of ``owner/name@revision`` under ``cache_dir``."""
    path = Path(spec)
    if path.is_dir():
        return path
    hub = parse_hub_spec(str(spec))
    if hub is None:
        raise ConfigError(f"{spec}: not a directory, and not a hub id of the form owner/name@revision")
    repo, revision = hub
    target = Path(cache_dir) / f"{repo.replace('/', '--')}@{revision}"
    if not (target / "SOURCE.json").is_file():
        fetch_source(repo=repo, revision=revision, output=target)
    return target
