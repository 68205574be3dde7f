"""Source resolution: local directories as given; hub ids fetched at a resolved commit with weights, config and
tokenizer files only (never the repository's .py files), atomically. The hub is faked: tests run offline."""

from __future__ import annotations

import fnmatch
import json
import types

import pytest

from kept.atomic import MARKER
from kept import source as src_mod
from kept.errors import ConfigError

SHA = "0123456789abcdef0123456789abcdef01234567"
HUB_FILES = ["config.json", "configuration_orion.py", "modeling_orion.py", "tokenization_orion.py",
             "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
             "tokenizer.model", "tokenizer_config.json", "generation_config.json", "README.md", "LICENSE.txt",
             "assets/logo.png"]


@pytest.fixture
def fake_hub(monkeypatch):
    calls = {}

    class FakeApi:
        def model_info(self, repo, revision):
            calls["info"] = (repo, revision)
            return types.SimpleNamespace(sha=SHA)

    def fake_snapshot_download(*, repo_id, revision, local_dir, allow_patterns, ignore_patterns, repo_type="model"):
        calls["download"] = dict(repo_id=repo_id, revision=revision, allow=allow_patterns, ignore=ignore_patterns)
        if calls.get("fail"):
            raise OSError("connection reset")
        from pathlib import Path

        for name in HUB_FILES:  # what huggingface_hub's own filtering would keep
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns) and not any(
                    fnmatch.fnmatch(name, p) for p in ignore_patterns):
                (Path(local_dir) / name).write_text("x")
        (Path(local_dir) / "sneaky.py").write_text("import os")  # as if a pattern had let one through

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return calls


def test_fetch_keeps_weights_config_tokenizer_only(tmp_path, fake_hub):
    out = tmp_path / "sources" / "base"
    record = src_mod.fetch_source(repo="OrionStarAI/Orion-14B-Base", revision="main", output=out)
    names = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    assert (out / MARKER).is_file()  # the ownership marker of kept.atomic
    assert names == sorted(["SOURCE.json", "config.json", "generation_config.json", "pytorch_model-00001-of-00002.bin",
                            "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json", "tokenizer.model",
                            "tokenizer_config.json", "README.md", "LICENSE.txt"])
    assert not list(out.rglob("*.py"))
    assert fake_hub["download"]["revision"] == SHA  # downloads exactly the resolved commit
    assert "*.py" in fake_hub["download"]["ignore"]
    saved = json.loads((out / "SOURCE.json").read_text())
    assert saved == record and saved["commit"] == SHA and saved["pinned"] is False and saved["revision"] == "main"


def test_pinned_revision_is_recorded_as_pinned(tmp_path, fake_hub):
    record = src_mod.fetch_source(repo="OrionStarAI/Orion-14B-Chat", revision=SHA, output=tmp_path / "chat")
    assert record["pinned"] is True


def test_failed_download_leaves_nothing(tmp_path, fake_hub):
    fake_hub["fail"] = True
    out = tmp_path / "sources" / "base"
    with pytest.raises(OSError):
        src_mod.fetch_source(repo="OrionStarAI/Orion-14B-Base", revision=SHA, output=out)
    assert not out.exists() and not list(out.parent.glob(".tmp-*"))


def test_resolve_source(tmp_path, fake_hub):
    local = tmp_path / "orion"
    local.mkdir()
    assert src_mod.resolve_source(local, cache_dir=tmp_path / "cache") == local
    got = src_mod.resolve_source(f"OrionStarAI/Orion-14B-Base@{SHA}", cache_dir=tmp_path / "cache")
    assert (got / "SOURCE.json").is_file() and got.parent == tmp_path / "cache"
    assert src_mod.parse_hub_spec("OrionStarAI/Orion-14B-Base") is None
    with pytest.raises(ConfigError, match="owner/name@revision"):
        src_mod.resolve_source(tmp_path / "missing", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="owner/name"):
        src_mod.fetch_source(repo="../etc", revision=SHA, output=tmp_path / "x")


@pytest.mark.parametrize("family,repo", [("olmo", "allenai/OLMo-1B-hf"), ("gpt_neox", "EleutherAI/pythia-1.4b")])
def test_hub_source_of_another_family_converts(tmp_path, monkeypatch, family, repo):
    """`kept convert REPO@REVISION` for a BPE-tokenizer family: the snapshot keeps safetensors, config and
    tokenizer.json (no .py), and the conversion runs on it."""
    import shutil
    from pathlib import Path

    import huggingface_hub

    from kept.cli import main as kept_main
    from kept.convert.tiny import make_checkpoint

    real = make_checkpoint(tmp_path / "real", family)
    (real / "modeling_remote.py").write_text("raise SystemExit('remote code ran')")
    seen = {}

    class FakeApi:
        def model_info(self, repo, revision):
            return types.SimpleNamespace(sha=SHA)

    def fake_snapshot_download(*, repo_id, revision, local_dir, allow_patterns, ignore_patterns, repo_type="model"):
        seen["repo"] = repo_id
        for f in real.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns) and not any(
                    fnmatch.fnmatch(f.name, p) for p in ignore_patterns):
                shutil.copyfile(f, Path(local_dir) / f.name)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "out" / "llama"
    assert kept_main(["convert", f"{repo}@main", str(out), "--norm", "exact", "--fidelity-tokens", "16"]) == 0
    assert seen["repo"] == repo
    snapshot = next((tmp_path / "out" / ".sources").iterdir())
    assert (snapshot / "tokenizer.json").is_file() and not list(snapshot.glob("*.py"))
    conv = json.loads((out / "conversion.json").read_text())
    assert conv["family"] == family and conv["source_card"]["base_model"] == repo
    assert (out / "tokenizer.json").read_bytes() == (real / "tokenizer.json").read_bytes()
