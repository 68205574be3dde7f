"""The fetch stage offline: MIRACL's files fetched from a stand-in for the hub (a local tree laid out like the
dataset repo, filtered as huggingface_hub filters) and read by prepare_corpus on a "compute node"; lm-eval's
datasets pre-cached into the workflow's own cache; the offline environment every other job runs with."""

from __future__ import annotations

import fnmatch
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kept.atomic import MARKER
from kept.corpus import fetch_miracl, miracl_local_files, prepare_corpus
from kept.errors import KeptError
from kept.smk import hf_environment
from test_corpus import LANGS, _config, miracl  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
SHA = "d921ec7e349ce0d28daf30b2da9da5ee698bef0d"


def _hub_tree(root: Path, records: dict[str, list[dict]]) -> Path:
    """The miracl/miracl-corpus repo as the hub holds it: per language gzipped JSON-lines shards, plus the
    loading script and files of other languages that must not be fetched."""
    for lang, recs in [*records.items(), ("de", records["en"])]:
        folder = root / f"miracl-corpus-v1.0-{lang}"
        folder.mkdir(parents=True)
        with gzip.open(folder / "docs-0.jsonl.gz", "wt", encoding="utf-8") as fh:
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (root / "miracl-corpus.py").write_text("import os  # the repo's loading script\n")
    (root / "README.md").write_text("# MIRACL\n")
    return root


def _fake_hub(tree: Path, calls: dict):
    def resolve(repo, revision, repo_type):
        calls["resolve"] = (repo, revision, repo_type)
        return SHA

    def download(*, repo_id, repo_type, revision, local_dir, allow_patterns, ignore_patterns):
        calls["download"] = dict(repo_id=repo_id, repo_type=repo_type, revision=revision, allow=allow_patterns)
        for path in tree.rglob("*"):
            rel = str(path.relative_to(tree))
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns) and not any(
                    fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, Path(local_dir) / rel)

    return resolve, download


def test_fetched_miracl_files_pack_like_the_same_local_files(miracl, tmp_path):  # noqa: F811
    tree = _hub_tree(tmp_path / "hub", miracl["records"])
    calls: dict = {}
    resolve, download = _fake_hub(tree, calls)
    out = tmp_path / "downloads" / "miracl"
    record = fetch_miracl(output=out, languages=list(LANGS), revision="main", resolve=resolve, download=download)
    assert calls["resolve"] == ("miracl/miracl-corpus", "main", "dataset") and calls["download"]["revision"] == SHA
    assert record["commit"] == SHA and record["pinned"] is False
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "SOURCE.json",
                                                            *(f"miracl-corpus-v1.0-{lang}" for lang in LANGS)])
    assert json.loads((out / "SOURCE.json").read_text())["files"]["ko"] == ["miracl-corpus-v1.0-ko/docs-0.jsonl.gz"]
    # the corpus job reads the fetched files (no hub): the same rows as from the same records given directly
    files = miracl_local_files(out, list(LANGS))
    fetched = prepare_corpus(_config(miracl, tmp_path / "c1", data_files=files))
    direct = prepare_corpus(_config(miracl, tmp_path / "c2"))
    assert fetched["tokens_per_language"] == direct["tokens_per_language"]
    rows = [np.concatenate([np.load(d / s) for s in m["shards"]]) for d, m in ((tmp_path / "c1", fetched),
                                                                               (tmp_path / "c2", direct))]
    np.testing.assert_array_equal(*rows)


def test_fetch_without_a_language_fails_and_leaves_nothing(miracl, tmp_path):  # noqa: F811
    tree = _hub_tree(tmp_path / "hub", {k: v for k, v in miracl["records"].items() if k != "ja"})
    resolve, download = _fake_hub(tree, {})
    out = tmp_path / "downloads" / "miracl"
    with pytest.raises(KeptError, match=r"miracl-corpus-v1\.0-ja/docs-\*\.jsonl\.gz"):
        fetch_miracl(output=out, languages=list(LANGS), revision=SHA, resolve=resolve, download=download)
    assert not out.exists() and not list(out.parent.glob(".tmp-*"))


def test_lm_eval_datasets_are_cached_into_the_workflow_cache(tmp_path):
    """precache_tasks in a process whose Hugging Face caches point into the rule's output (as the fetch rule's
    script sets them): the task's Arrow files land there, the manifest lists the task and its splits."""
    from eval_tiny import make_mc_task

    make_mc_task(tmp_path / "tasks", "tiny_mc", n=12, n_dev=6)
    cache = tmp_path / "hf_datasets"
    code = (
        "import sys\n"
        "from kept.smk import hf_environment\n"
        "hf_environment(network=False, hf_cache=sys.argv[1])\n"
        "from kept.eval.harness import TaskSpec, precache_tasks\n"
        "spec = TaskSpec(name='MC', task='tiny_mc', shots=0, metric='acc,none')\n"
        "precache_tasks(tasks=[spec], output=sys.argv[1], task_dir=sys.argv[2], include_defaults=False)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_DATASETS_CACHE", "HF_HUB_CACHE"))}
    proc = subprocess.run([sys.executable, "-c", code, str(cache), str(tmp_path / "tasks")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["tasks"]["tiny_mc"]["splits"] == {"test": 12, "dev": 6}
    assert manifest["tasks"]["tiny_mc"]["column"] == "MC"
    assert list((cache / "datasets").rglob("*.arrow")), "the datasets were not cached into the rule's output"


def test_jobs_run_offline_unless_they_fetch(monkeypatch, tmp_path):
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.setenv(key, "x")  # recorded, so the test's own changes are undone afterwards
        monkeypatch.delenv(key)
    hf_environment(network=False)
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_DATASETS_CACHE" not in os.environ
    hf_environment(network=True, hf_cache=str(tmp_path / "c"))
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert os.environ["HF_DATASETS_CACHE"] == str(tmp_path / "c" / "datasets")
    assert os.environ["HF_HUB_CACHE"] == str(tmp_path / "c" / "hub")
