"""Where a teacher checkpoint comes from: a local directory, or a hub repository at a pinned revision.

Hub snapshots hold the weights, config, tokenizer files and model card only (:data:`ALLOW_PATTERNS`); the repository's
``.py`` files (Orion's remote code) are never downloaded, let alone run. The resolved commit is recorded in
``SOURCE.json`` next to the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from kept.atomic import atomic_dir
from kept.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.model",
    "tokenizer.json",  # tokenizers-library (BPE) families: OLMo, StableLM, GPT-NeoX, Phi
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
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
    return fetch_snapshot(repo=repo, revision=revision, output=output, allow_patterns=ALLOW_PATTERNS,
                          describe=lambda _tmp: {"allow_patterns": ALLOW_PATTERNS})


def fetch_snapshot(*, repo: str, revision: str, output: str | Path, allow_patterns: list[str],
                   describe: Callable[[Path], dict[str, Any]], repo_type: str = "model",
                   resolve: Resolver | None = None, download: Downloader | None = None) -> dict[str, Any]:
    """Resolve ``revision`` (before anything is written), download the matching files into ``output``
    atomically, and record ``SOURCE.json``: repo, revision, resolved commit, whether it was pinned, plus
    ``describe(tmp)`` of the downloaded tree. The hub's errors become one line (:func:`hub_errors`). Returns the
    record."""
    with hub_errors(repo, revision, output):
        sha = resolve_revision(repo, revision, repo_type=repo_type, resolve=resolve)
    with atomic_dir(output) as tmp, hub_errors(repo, revision, output):
        hub_snapshot(repo=repo, commit=sha, local_dir=tmp, repo_type=repo_type, allow_patterns=allow_patterns,
                     download=download)
        record = {"repo": repo, "revision": revision, "commit": sha, "pinned": bool(SHA.match(revision)),
                  **describe(tmp)}
        (tmp / "SOURCE.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


Resolver = Callable[[str, str, str], str]  # (repo, revision, repo_type) -> commit SHA
Downloader = Callable[..., Any]  # huggingface_hub.snapshot_download's keyword interface


def resolve_revision(repo: str, revision: str, *, repo_type: str = "model", resolve: Resolver | None = None) -> str:
    """The commit hub repo ``repo`` has at ``revision`` (a branch or tag is logged as not pinned). Runs before
    anything is written, so a wrong id, an offline host or a missing revision leaves no trace."""
    if not HUB_ID.match(repo):
        raise ConfigError(f"hub repository {repo!r} is not of the form owner/name")
    if not revision:
        raise ConfigError(f"{repo}: a revision is required")
    if resolve is None:
        from huggingface_hub import HfApi

        def resolve(repo: str, revision: str, repo_type: str) -> str:
            api = HfApi()
            info = api.dataset_info if repo_type == "dataset" else api.model_info
            return info(repo, revision=revision).sha

    sha = resolve(repo, revision, repo_type)
    if not SHA.match(revision):
        log.warning("%s: revision %r is not a commit SHA; resolved to %s (pin it for reproducibility)",
                    repo, revision, sha)
    return sha


def hub_snapshot(*, repo: str, commit: str, local_dir: str | Path, allow_patterns: list[str],
                 repo_type: str = "model", download: Downloader | None = None) -> None:
    """Download the files of hub repo ``repo`` matching ``allow_patterns`` at ``commit`` (from
    :func:`resolve_revision`) into ``local_dir`` (plain files, no hub cache), never any ``.py``. ``download``
    defaults to huggingface_hub's ``snapshot_download``; tests pass a local stand-in, so the fetch runs offline."""
    if download is None:
        from huggingface_hub import snapshot_download as download
    local = Path(local_dir)
    download(repo_id=repo, repo_type=repo_type, revision=commit, local_dir=str(local), allow_patterns=allow_patterns,
             ignore_patterns=IGNORE_PATTERNS)
    for py in local.rglob("*.py"):  # belt and braces: nothing executable travels with the files
        py.unlink()
    cache = local / ".cache"
    if cache.is_dir():
        import shutil

        shutil.rmtree(cache)


@contextlib.contextmanager
def hub_errors(repo: str, revision: str, output: str | Path) -> Iterator[None]:
    """The hub's own errors as one line naming the repository, revision and what to do."""
    from huggingface_hub import errors as hub

    where = f"{repo}@{revision}"
    try:
        yield
    except hub.OfflineModeIsEnabled:
        raise ConfigError(f"{where}: HF_HUB_OFFLINE is set and there is no downloaded snapshot at {output}; "
                          "unset HF_HUB_OFFLINE to download it, or give a local checkpoint directory") from None
    except hub.GatedRepoError:
        raise ConfigError(f"{where}: the repository is gated; accept its terms on the hub and log in "
                          "(huggingface-cli login), or give a local checkpoint directory") from None
    except hub.RepositoryNotFoundError:
        raise ConfigError(f"{where}: no such repository on the hub (or it is private: log in first)") from None
    except hub.RevisionNotFoundError:
        raise ConfigError(f"{where}: the repository has no revision {revision!r}") from None
    except hub.HfHubHTTPError as exc:
        raise CheckpointError(f"{where}: hub request failed ({' '.join(str(exc).split())[:300]})") from None


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
