"""Model cards (kept.card) and the conversion-time tokenizer warnings: every exported checkpoint carries a
README.md whose YAML front matter parses (PyYAML, and huggingface_hub's ModelCard when installed), whose metadata
is carried from the source, and whose figures are those of the files beside it; a README.md the program did not
write is never replaced."""

from __future__ import annotations

import json
import logging
import math
import statistics

import pytest
import yaml
from tiny_orion import make_corpus, make_orion_checkpoint, train_sp

from kept.card import MARK, front_matter, render_card, write_model_card
from kept.convert import convert_checkpoint
from kept.errors import KeptError
from kept.tokenizer import runtime_warnings

SOURCE_CARD = """---
license: other
license_name: orion-community
license_link: LICENSE
language:
- en
- ko
tags:
- orion
---
# Orion (tiny)
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A chat source with its own card, LICENSE and hub record, converted with ``exact``; the toy-like SentencePiece
    defaults (nmt_nfkc, extra-whitespace removal, no byte fallback) trigger every tokenizer warning."""
    root = tmp_path_factory.mktemp("card")
    sp = train_sp(root / "sp.model")
    src = make_orion_checkpoint(root / "orion", sp_model=sp, chat=True, num_shards=1)
    (src / "README.md").write_text(SOURCE_CARD)
    (src / "LICENSE").write_text("terms")
    (src / "SOURCE.json").write_text(json.dumps({"repo": "OrionStarAI/Orion-14B-Chat", "commit": "a" * 40}))
    corpus = make_corpus(root / "corpus", sp_model=sp, n_seq=4, max_length=16)
    out = root / "init-exact"
    logger = logging.getLogger("kept.convert")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        report = convert_checkpoint(source=src, output=out, norm="exact", calibration=corpus, fidelity_tokens=32)
    finally:
        logger.removeHandler(handler)
    return {"root": root, "sp": sp, "src": src, "out": out, "report": report, "records": records}


def test_conversion_writes_a_card_with_hub_metadata(converted):
    out, report = converted["out"], converted["report"]
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta == yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "OrionStarAI/Orion-14B-Chat"
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "orion-community", "LICENSE")
    assert meta["language"] == ["en", "ko"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"llama", "norm-exact", "chat"} <= set(meta["tags"])
    assert MARK in text
    # the figures are those of fidelity.json, with what they were measured on
    kl = report["kl_per_sequence"]
    assert len(kl) > 1 and abs(sum(kl) / len(kl) - report["kl_mean"]) < 1e-9  # equal sequences: the token mean
    se = statistics.stdev(kl) / math.sqrt(len(kl))
    assert f"| kl_mean | {report['kl_mean']:.4g} ± {se:.2g} |" in text
    assert f"± one standard error over its {len(kl)} sequences" in text
    assert f"{report['offset_corrected']['top1_agreement']:.4g}" in text
    assert "32 tokens of" in text and "(last sequences)" in text
    # runtime requirements: exact needs the bias options; the chat template needs Jinja in llama.cpp
    assert "`attention_bias: true` and `mlp_bias: true`" in text
    assert "--jinja" in text and "this custom template is not supported" in text
    for section in ("## How it was made", "## Fidelity to the source", "## Runtime requirements",
                    "### transformers", "### vLLM", "### llama.cpp"):
        assert section in text
    assert "## Evaluation" not in text  # nothing evaluated yet


def test_card_parses_as_a_hub_model_card(converted):
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard.load(converted["out"] / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "OrionStarAI/Orion-14B-Chat" and data["license"] == "other"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert "Fidelity to the source" in card.text


def test_tokenizer_warnings_at_conversion(converted):
    conv = json.loads((converted["out"] / "conversion.json").read_text())
    props = [w["property"] for w in conv["tokenizer_warnings"]]
    assert props == ["normalizer rules", "extra-whitespace removal", "no byte fallback",
                     "missing newline and tab piece"]
    assert all(w["advice"] and w["effect"] for w in conv["tokenizer_warnings"])
    logged = [r.getMessage() for r in converted["records"] if r.levelno == logging.WARNING]
    assert len([m for m in logged if m.startswith("tokenizer: ")]) == 4
    assert conv["source_card"]["license_files"] == ["LICENSE"]
    text = (converted["out"] / "README.md").read_text()
    assert "**no byte fallback**" in text and "**missing newline and tab piece**" in text


def test_runtime_warnings_follow_the_tokenizer(tmp_path):
    clean = train_sp(tmp_path / "clean.model", byte_fallback=True, normalization_rule_name="identity",
                     remove_extra_whitespaces=False)
    assert runtime_warnings(clean) == []  # the toy world's settings: nothing for a runtime to trip over
    nfkc_bytes = train_sp(tmp_path / "nfkc.model", byte_fallback=True)  # byte pieces cover \n and \t
    assert [w["property"] for w in runtime_warnings(nfkc_bytes)] == ["normalizer rules", "extra-whitespace removal"]
    ident = train_sp(tmp_path / "ident.model", normalization_rule_name="identity", remove_extra_whitespaces=False)
    # identity normalisation keeps the training text's tabs as a piece; newlines were never in it
    assert [w["property"] for w in runtime_warnings(ident)] == ["no byte fallback", "missing newline piece"]


def test_card_never_replaces_a_readme_it_did_not_write(converted, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(converted["out"], model)
    (model / "README.md").write_text("# my own notes\n")
    with pytest.raises(KeptError, match="not written by kept"):
        write_model_card(model)
    assert (model / "README.md").read_text() == "# my own notes\n"
    (model / "README.md").unlink()
    write_model_card(model, name="renamed")
    assert "# renamed" in (model / "README.md").read_text()
    write_model_card(model)  # its own card: replaced
    assert "# Orion-14B-Chat-llama-exact" in (model / "README.md").read_text()


def test_trained_export_card_has_recipe_and_init_fidelity(converted, tmp_path):
    from transformers import AutoModelForCausalLM

    from kept.train.config import TrainConfig
    from kept.train.export import export_model

    init = converted["out"]
    model = AutoModelForCausalLM.from_pretrained(init, trust_remote_code=False)
    cfg = TrainConfig(objective="xkd_z", student=str(init), corpus="c", teacher=str(converted["src"]), output="o",
                      work_dir="w", steps=40, batch_size=2, grad_accum=3, max_length=16, lr=1e-4)
    extra = {"objective": "xkd_z", "student": str(init), "teacher": str(converted["src"]), "steps": 40,
             "config": cfg.to_dict(), "summary": {"tokens": 3840, "final_loss": 1.25, "world_size": 1}}
    out = export_model(model, tmp_path / "xkd_z", student_dir=init, fmt="llama", extra=extra, num_shards=1)
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "OrionStarAI/Orion-14B-Chat" and "xkd-z" in meta["tags"]
    assert "# Orion-14B-Chat-llama-exact-xkd-z" in text
    assert "global batch 6 sequences of 16 tokens" in text and "3.84k training tokens" in text
    assert "initial conversion this model was trained from" in text
    assert f"| kl_mean | {converted['report']['kl_mean']:.4g} ± " in text
    assert not (out / "fidelity.json").exists()  # the init's report is quoted, not copied


def test_evaluated_card(converted, tmp_path):
    h6 = {"model": "init-exact", "variant": "chat", "suite": "h6", "limit": None, "average": 0.5,
          "columns": [{"name": "ARC", "task": "toy_arc", "shots": 25, "metric": "acc_norm,none", "value": 0.61,
                       "stderr": 0.03, "chance": 0.25, "n": 100},
                      {"name": "GSM8K", "task": "toy_gsm8k", "shots": 5, "metric": "exact_match,strict-match",
                       "value": 0.39, "stderr": 0.05, "chance": 0.0, "n": 50}]}
    mt = {"model": "init-exact", "variant": "chat", "format": "llama3", "judge": "toy-judge", "turn1": 6.5,
          "turn2": 5.25, "average": 5.875, "by_category": {}, "n_judgments": 16, "n_failed": 0}
    text = render_card(model_dir=converted["out"], evaluations={"h6": h6, "mtbench-llama3": mt})
    assert "## Evaluation" in text
    assert "| ARC | 25 | acc_norm,none | 0.61 | 0.03 | 100 |" in text and "| average | | | 0.5 | | |" in text
    assert "MT-Bench, llama3 chat format** (judge toy-judge): turn 1 6.5, turn 2 5.25, average 5.875" in text


def test_kept_card_command_adds_scores(converted, tmp_path, capsys):
    import shutil

    from kept.cli import main

    model = tmp_path / "m"
    shutil.copytree(converted["out"], model)
    summary = tmp_path / "code.json"
    summary.write_text(json.dumps({"model": "init-exact", "variant": "chat", "ppl": 3.5, "accuracy": 0.25, "n": 8,
                                   "tokens": 100}))
    assert main(["card", str(model), "--eval", str(summary)]) == 0
    text = (model / "README.md").read_text()
    assert "**code probe**: perplexity 3.5, greedy answer accuracy 0.25 on 8 items." in text
    assert main(["card", str(model), "--eval", str(tmp_path / "missing.json")]) == 1  # a KeptError, no traceback
    assert "missing or empty evaluation summary" in capsys.readouterr().err
