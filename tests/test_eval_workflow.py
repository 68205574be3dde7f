"""The evaluation rules through Snakemake: the paper config without a judge stops with a clear error before
any job; dry runs schedule the grid of the config (H6 on every model, MT-Bench students in both formats,
KoMMLU/code/long context on the configured subsets, recovery on every snapshot)."""

from __future__ import annotations

import collections

import pytest
import yaml

from test_workflow import ROOT, copy_workflow, parse_jobs, snakemake


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalwf")
    copy_workflow(d)
    return d


def _config(wd, name, edit):
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    edit(cfg)
    path = wd / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path.name


def test_paper_config_without_judge_stops_with_a_clear_error(wd):
    def no_judge(cfg):
        cfg["eval"]["mtbench"]["judge"] = None

    proc = snakemake("-n", "--configfile", _config(wd, "nojudge", no_judge), cwd=wd, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "eval.mtbench.judge is not configured" in out and "never made up" in out
    assert "mtbench_answer" not in out  # stopped before scheduling anything


@pytest.mark.slow
def test_paper_dry_run_schedules_the_eval_grid(wd):
    def steps(cfg):
        cfg["train"]["steps"], cfg["train"]["snapshot_every"] = 30, 10

    proc = snakemake("-n", "--configfile", _config(wd, "paper_steps", steps), cwd=wd, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    jobs = parse_jobs(proc.stdout + proc.stderr)
    by_rule = collections.defaultdict(list)
    for j in jobs:
        by_rule[j["rule"]].append(j)
    h6 = [j for j in by_rule["eval_harness"] if j["wildcards"].get("suite") == "h6"]
    kommlu = [j for j in by_rule["eval_harness"] if j["wildcards"].get("suite") == "kommlu"]
    grid = {"teacher", "init-paper", "init-centered", "init-exact", "init-fit", "ut", "xkd_h", "xkd_z"}
    assert {(j["wildcards"]["variant"], j["wildcards"]["model"]) for j in h6} == \
        {(v, m) for v in ("base", "chat") for m in grid}
    table4 = {"teacher", "init-paper", "ut", "xkd_h", "xkd_z"}
    assert {j["wildcards"]["model"] for j in kommlu} == table4
    answer_jobs = by_rule["mtbench_answer_teacher"] + by_rule["mtbench_answer_student"]
    assert {(j["wildcards"]["variant"], j["wildcards"]["model"]) for j in by_rule["mtbench_answer_teacher"]} == \
        {("base", "teacher"), ("chat", "teacher")}
    answers = {f.rsplit("/", 1)[1] for j in answer_jobs for f in j["output"]}
    assert len(answer_jobs) == 10 and answers == {f"{m}-{f}.jsonl" for m in table4
                                                  for f in (["orion"] if m == "teacher" else ["llama3", "orion"])}
    judged = {(j["wildcards"]["variant"], j["wildcards"]["model"], j["wildcards"]["fmt"]) for j in by_rule["mtbench_judge"]}
    assert judged == {(v, m, f) for v in ("base", "chat") for m in table4
                      for f in (["orion"] if m == "teacher" else ["llama3", "orion"])}
    assert len(by_rule["mtbench_data"]) == 1
    # one recovery job per snapshot (each is a full H6 run of a 14B model), one summary each; not the last one,
    # the final model, which H6 evaluates in full (the curves read its h6 summary there)
    assert sorted((j["wildcards"]["variant"], j["wildcards"]["method"], j["wildcards"]["step"])
                  for j in by_rule["eval_recovery"]) == \
        sorted((v, m, s) for v in ("base", "chat") for m in ("ut", "xkd_h", "xkd_z") for s in ("10", "20"))
    assert all([f.rsplit("/", 1)[1] for f in j["output"] if f.endswith(".json")] ==
               [f"step-{j['wildcards']['step']}.json"] for j in by_rule["eval_recovery"])
    assert {j["wildcards"]["model"] for j in by_rule["eval_longctx"]} == table4
    assert len(by_rule["longctx_docs"]) == 2 and len(by_rule["code_probe_data"]) == 1
    for rule in ("eval_harness", "mtbench_answer_teacher", "mtbench_answer_student", "eval_longctx", "eval_code",
                 "eval_recovery"):
        assert all(j["resources"].get("gpu") == "1" for j in by_rule[rule]), rule
    assert all("gpu" not in j["resources"] or j["resources"]["gpu"] == "0" for j in by_rule["mtbench_judge"])


@pytest.mark.slow
def test_default_config_eval_jobs(wd):
    """The default (toy) config's evaluation grid (the init x method grid, the corpus ablations): every job the time
    budget was sized for, toy judge named as such."""
    proc = snakemake("-n", "--configfile", "config.yaml", cwd=wd, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    jobs = parse_jobs(proc.stdout + proc.stderr)
    count = collections.Counter(j["rule"] for j in jobs)
    h6 = {(j["wildcards"]["variant"], j["wildcards"]["model"]) for j in jobs
          if j["rule"] == "eval_harness" and j["wildcards"].get("suite") == "h6"}
    # H6 on the whole grid of base and chat: teacher, 3 mappings, 3 methods from each of 2 inits, the fast path
    students = {f"{m}{i}" for m in ("ut", "xkd_h", "xkd_z") for i in ("", "@exact")}
    fast = {"xkd_z@exact-parity"}  # the fast path (train.fast): H6 and MT-Bench only
    inits = {"init-paper", "init-exact"}  # the two inits trained from (the other configs convert all four)
    expected = {(v, m) for v in ("base", "chat") for m in {"teacher"} | inits | students | fast}
    expected |= {("chat", "ut+broad"), ("chat", "xkd_z+broad")}  # the corpus-breadth ablation: Chat only
    expected |= {("base", "ut+full"), ("base", "xkd_z+full")}  # the full-coverage regime beside the narrow: Base only
    # the regime control Teacher + UT of every teacher; LongChat evaluates H6 only for that check (its teacher too);
    # no other family: the approximate families run in config/families.yaml
    expected |= {(v, "ut@teacher") for v in ("base", "chat", "longchat")} | {("longchat", "teacher")}
    assert h6 == expected
    assert count["eval_harness"] == 28 + 6  # KoMMLU on base: teacher, OPM, the paper's three students, the control
    # code: teacher, OPM and XKD-z on base, chat, longchat; longctx: + XKD-z from the exact mapping (LongChat
    # trains XKD-z only: variants.longchat.train.methods)
    assert count["eval_code"] == 3 * 3 and count["eval_longctx"] == 4
    # base 6 + fast + 2 coverage ablations, chat 6 + fast + 2 breadth ablations, longchat 2 (XKD-z from both
    # inits); + 3 controls
    assert count["train"] == 9 + 9 + 2 + 3
    # MT-Bench: no longchat; the controls of base and chat answer too
    assert count["mtbench_answer_teacher"] == 2 and count["mtbench_answer_student"] == 11 + 11
    assert count["mtbench_judge"] == 2 * 2 + 2 * 22
    # the regime check's held-out mixture loss: teacher and control of each of the 3 teachers
    assert count["mixture_loss"] == 3 * 2
    # 6 students x 1 intermediate snapshot (step 30 of 60; the last is the final model, which H6 evaluates in full)
    # on base
    assert count["eval_recovery"] == 6 * 1
    collect = [o for j in jobs if j["rule"] == "mtbench_collect" for o in j["output"]]
    assert len(collect) == 2 and all(o.endswith("toy-judge_single.jsonl") for o in collect)
    assert not any(j["resources"].get("gpu") == "1" for j in jobs if j["rule"].startswith(("eval_", "mtbench_")))


@pytest.mark.slow
def test_mtbench_data_from_a_configured_path(wd, tmp_path):
    """eval.mtbench.data as a directory laid out like FastChat's llm_judge/data: used in place, nothing fetched."""
    data = tmp_path / "llm_judge_data"
    for rel in ("judge_prompts.jsonl", "mt_bench/question.jsonl", "mt_bench/reference_answer/gpt-4.jsonl"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text("{}\n")

    def local_data(cfg):
        cfg["eval"]["mtbench"]["data"] = str(data)

    proc = snakemake("-n", "--configfile", _config(wd, "localdata", local_data), cwd=wd, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    jobs = parse_jobs(proc.stdout + proc.stderr)
    assert not [j for j in jobs if j["rule"] == "mtbench_data"]
    assert [j for j in jobs if j["rule"] == "mtbench_judge"]
    assert str(data / "mt_bench" / "question.jsonl") in proc.stdout + proc.stderr
