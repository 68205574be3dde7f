"""Workflow behaviour through Snakemake itself: dry runs of the shipped configs and profiles, GPU resources,
one shared smoke run (session-scoped, in a temporary copy of the workflow), the report after it, and reruns
limited to what a config change touches."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}
SKIP_DIRS = {".git", ".venv", ".snakemake", "results", "logs", "benchmarks", ".pytest_cache", "__pycache__"}


def copy_workflow(dst: Path) -> None:
    """Copy the working tree (tracked and untracked, minus ignored outputs) so runs never touch the repo's
    .snakemake state or results."""
    proc = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        files = [f for f in proc.stdout.splitlines() if not set(Path(f).parts) & SKIP_DIRS]
        for rel in files:
            src = ROOT / rel
            if src.is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel)
    else:  # not a git checkout
        shutil.copytree(ROOT, dst, dirs_exist_ok=True, ignore=lambda d, names: [n for n in names if n in SKIP_DIRS])


def snakemake(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def parse_jobs(text: str) -> list[dict]:
    """The jobs a dry run lists: rule, reason, wildcards, resources, output."""
    jobs: list[dict] = []
    for line in text.splitlines():
        head = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if head:
            jobs.append({"rule": head.group(1), "wildcards": {}, "resources": {}, "output": [], "reason": ""})
            continue
        field = re.match(r"^    (\w+): (.*)$", line)
        if not (jobs and field):
            continue
        key, value = field.groups()
        if key in ("wildcards", "resources"):
            jobs[-1][key] = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", value))
        elif key == "output":
            jobs[-1]["output"] = value.split(", ")
        elif key == "reason":
            jobs[-1]["reason"] = value
        elif key == "threads":
            jobs[-1]["threads"] = int(value)
    return jobs


def declared_gpu_rules() -> set[str]:
    """Rules whose resources mention gpu= (parsed from the rule files)."""
    names = set()
    for path in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]:
        for block in re.split(r"^(?=(?:rule|checkpoint) )", path.read_text(), flags=re.M):
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            res = re.search(r"^    resources:\n((?:        .*\n)+)", block, flags=re.M)
            if head and res and re.search(r"\bgpu\s*=", res.group(1)):
                names.add(head.group(1))
    return names


@pytest.fixture(scope="session")
def workflow_copy(tmp_path_factory) -> Path:
    """A results-free copy of the workflow for dry runs."""
    wd = tmp_path_factory.mktemp("workflow")
    copy_workflow(wd)
    return wd


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Path:
    """ONE smoke run of the whole DAG (config/smoke.yaml), shared by every test that needs finished outputs.
    KEPT_SMOKE_DIR=<dir of a finished smoke run made by this fixture> reuses it (while iterating on tests)."""
    reuse = os.environ.get("KEPT_SMOKE_DIR")
    if reuse:
        return Path(reuse)
    wd = tmp_path_factory.mktemp("smoke-run")
    copy_workflow(wd)
    proc = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=wd, timeout=3000)
    if proc.returncode != 0:
        pytest.fail("smoke run failed:\n" + (proc.stdout + proc.stderr)[-8000:])
    return wd


# ---- dry runs ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("configfile", ["config.yaml"] + sorted(f"config/{p.name}" for p in (ROOT / "config").glob("*.yaml")))
def test_dry_run_of_shipped_config(workflow_copy, configfile):
    jobs = parse_jobs(ok(snakemake("-n", "--configfile", configfile, cwd=workflow_copy)))
    rules = {j["rule"] for j in jobs}
    assert {"all", "report_table_h6", "report_table_fidelity"} <= rules
    assert all(j["rule"] == "all" or j["resources"] for j in jobs)
    if configfile != "config/graft.yaml":  # only the graft config has a graft axis (the default run's budget)
        assert not rules & {"kv_cache", "report_table_graft"}
        assert not [j for j in jobs if "-kv" in j["wildcards"].get("init", "") + j["wildcards"].get("method", "")]
    if configfile == "config/families.yaml":  # OLMo converts what it can (variants.olmo.convert.norms), the rest all
        converted = {(j["wildcards"]["variant"], j["wildcards"]["init"]) for j in jobs if j["rule"] == "convert"}
        assert {n for v, n in converted if v == "olmo"} == {"paper", "centered", "exact"}
        # the approximate families also convert with the layer-wise fit (issue 28): the parallel ones both OPM and
        # Exact (their Exact is approximate too), Qwen3 its primary mapping (its Exact is the same mapping)
        assert {n for v, n in converted if v == "phi"} == {"paper", "centered", "exact", "fit", "paper-lfit",
                                                            "exact-lfit"}
        # the zoo's RMSNorm teachers: their one mapping, under both init names; Qwen3 (q/k norms) is approximate
        assert {n for v, n in converted if v == "qwen2"} == {"paper", "exact"}
        assert {n for v, n in converted if v == "qwen3"} == {"paper", "exact", "paper-lfit"}
        assert {n for v, n in converted if v == "falcon"} == {"paper", "centered", "exact", "fit", "paper-lfit",
                                                               "exact-lfit"}
        assert not {n for v, n in converted if v in ("base", "olmo", "qwen2") and n.endswith("-lfit")}  # exact ones


@pytest.mark.slow
def test_gpu_rules_request_one_gpu_with_memory_and_runtime(workflow_copy):
    """Paper config (cuda devices) under --resources gpu=1: every GPU rule's jobs ask for one GPU, memory and a
    runtime; the toy default (cpu) asks for none, so plain --cores runs work."""
    declared = declared_gpu_rules()
    assert declared
    paper = parse_jobs(ok(snakemake("-n", "--cores", "8", "--resources", "gpu=1", "--configfile",
                                    "config/paper.yaml", cwd=workflow_copy)))
    gpu_jobs = [j for j in paper if int(j["resources"].get("gpu", 0)) > 0]
    assert {j["rule"] for j in gpu_jobs} == declared & {j["rule"] for j in paper}
    for job in gpu_jobs:
        assert job["resources"]["gpu"] == "1", job
        assert int(job["resources"]["mem_mb"]) > 0 and int(job["resources"]["runtime"]) > 0, job
    toy = parse_jobs(ok(snakemake("-n", "--cores", "2", "--resources", "gpu=1", cwd=workflow_copy)))
    assert not [j for j in toy if int(j["resources"].get("gpu", 0)) > 0]


@pytest.mark.slow
def test_slurm_profile_dry_run(tmp_path):
    """`snakemake -n --profile profiles/slurm --configfile config/paper.yaml` in a scratch copy whose profile
    placeholders are filled in, as a user would (the dry run checks that the executor exists and the profile
    parses; it never calls sbatch). Every job that touches the network is a local rule (run on the submitting
    host); every submitted job's script keeps the hub offline; each GPU job, put through the plugin's own sbatch
    builders, asks for an A100; training asks for at least the host memory DeepSpeed's estimator gives for
    ZeRO-2 offload; recovery evaluation is one job per snapshot."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    wd = tmp_path / "workflow"
    copy_workflow(wd)
    profile_file = wd / "profiles/slurm/config.yaml"
    filled = {"<CPU_PARTITION>": "cpu", "<GPU_PARTITION>": "gpu", "<ACCOUNT>": "kept"}
    text = profile_file.read_text()
    assert all(key in text for key in filled)
    for key, value in filled.items():
        text = text.replace(key, value)
    profile_file.write_text(text)
    profile = yaml.safe_load(text)
    assert profile["executor"] == "slurm"
    for rule in profile.get("set-resources", {}):
        assert rule in declared_rules(), f"profiles/slurm sets resources for unknown rule {rule}"
    ok(snakemake("-n", "--profile", "profiles/slurm", cwd=wd))
    # --cores 64: a dry run executes locally and would cap threads at one core; a SLURM run does not
    jobs = parse_jobs(ok(snakemake("-n", "--profile", "profiles/slurm", "--configfile", "config/paper.yaml",
                                   "--cores", "64", cwd=wd)))
    ran = {j["rule"] for j in jobs}
    local = local_rules(wd, "config/paper.yaml")
    network = network_rules() | {"mtbench_judge"}  # the paper config's judge is an OpenAI-compatible API
    assert {"fetch_source", "fetch_miracl", "fetch_lm_eval", "code_probe_data", "mtbench_data", "longctx_docs",
            "mtbench_judge"} <= network & ran
    assert network & ran <= local, f"network jobs submitted to compute nodes: {sorted((network & ran) - local)}"
    report_jobs = {j["rule"] for j in jobs if j["rule"].startswith("report_")}
    assert report_jobs and report_jobs <= local, f"report jobs submitted to compute nodes: {report_jobs - local}"
    cluster = [j for j in jobs if j["rule"] != "all" and j["rule"] not in local]
    assert cluster and not {j["rule"] for j in cluster} & network
    for job in cluster:
        res = job["resources"]
        assert res.get("slurm_account") == "kept" and res.get("slurm_partition") in ("cpu", "gpu"), job
        assert "runtime" in res and "mem_mb" in res, job
    gpu_jobs = [j for j in cluster if int(j["resources"].get("gpu", 0)) > 0]
    assert {"train", "eval_harness", "eval_recovery", "convert", "pilot"} <= {j["rule"] for j in gpu_jobs}
    assert max(j.get("threads", 1) for j in gpu_jobs if j["rule"] == "train") > 1
    for job in gpu_jobs:
        res = {k: int(v) if v.isdigit() else v for k, v in job["resources"].items()}
        fake = SimpleNamespace(resources=SimpleNamespace(get=res.get, **res), threads=job.get("threads", 1))
        params = {"run_uuid": "dry", "slurm_logfile": "slurm.log", "comment_str": job["rule"], "workdir": None,
                  "account": f"-A '{res['slurm_account']}'", "partition": f"-p '{res['slurm_partition']}'"}
        sbatch = get_submit_command(fake, params) + set_gres_string(fake)
        for part in ("-A 'kept'", "-p 'gpu'", f"-t {res['runtime']}", f"--mem {res['mem_mb']}", "--gpus=a100:1",
                     f"--cpus-per-task={fake.threads}"):
            assert part in sbatch, (part, sbatch)
    # DeepSpeed's estimator for 14.5B parameters, ZeRO-2 with the optimizer in host memory: 324.07 GiB
    assert all(int(j["resources"]["mem_mb"]) * 1e6 >= 324.07 * 2**30 for j in jobs if j["rule"] == "train")
    paper = yaml.safe_load((wd / "config/paper.yaml").read_text())
    steps = range(paper["train"]["snapshot_every"], paper["train"]["steps"] + 1, paper["train"]["snapshot_every"])
    recovery = [j for j in jobs if j["rule"] == "eval_recovery"]
    h6_variants = [v for v, spec in paper["variants"].items() if "h6" in spec["evals"]]
    # every snapshot but the last (the final model: H6 evaluates it in full, the curves read that summary)
    assert len(recovery) == len(h6_variants) * len(paper["train"]["methods"]) * (len(steps) - 1)
    assert {int(j["wildcards"]["step"]) for j in recovery} == set(steps) - {steps[-1]}


def local_rules(wd: Path, configfile: str) -> set[str]:
    """The workflow's localrules under ``configfile``, read through Snakemake's API (the dry run's job list does
    not mark them)."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import ConfigSettings, ResourceSettings, StorageSettings, WorkflowSettings\n"
        "with SnakemakeApi() as api:\n"
        "    wf = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),\n"
        "        config_settings=ConfigSettings(configfiles=[Path(sys.argv[1])]), workflow_settings=WorkflowSettings(),\n"
        "        snakefile=Path('Snakefile'))\n"
        "    print('LOCAL', ' '.join(sorted(wf._workflow._localrules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, configfile], cwd=wd, capture_output=True, text=True, env=ENV,
                          timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOCAL")), None)
    assert line, (proc.stdout + proc.stderr)[-3000:]
    return set(line.split()[1:])


def network_rules() -> set[str]:
    """Rules whose script turns the network on (kept.smk.log_to_rule(..., network=True)): the fetch stage."""
    names = set()
    for path in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule )", path.read_text(), flags=re.M):
            head = re.match(r"rule (\w+):", block)
            script = re.search(r'^    script:\n        "\.\./(scripts/\w+\.py)"', block, flags=re.M)
            if head and script and "network=True" in (ROOT / script.group(1)).read_text():
                names.add(head.group(1))
    return names


def declared_rules() -> set[str]:
    names = set()
    for path in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]:
        names |= set(re.findall(r"^(?:rule|checkpoint) (\w+):", path.read_text(), flags=re.M))
    return names


# ---- after one smoke run -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_is_complete_and_reports(smoke):
    out = ok(snakemake("-n", "--configfile", "config/smoke.yaml", cwd=smoke))
    assert "Nothing to be done" in out
    results = Path(yaml.safe_load((smoke / "config/smoke.yaml").read_text())["results"])
    tables = sorted((smoke / results / "report" / "tables").glob("*.md"))
    figures = sorted((smoke / results / "report" / "figures").glob("*.png"))
    assert {t.stem for t in tables} >= {"h6", "mtbench", "fidelity", "transfer_code", "regime", "split"}
    regime = (smoke / results / "report" / "tables" / "regime.csv").read_text()
    assert regime.count("\n") == 3 and all(v in regime for v in ("base,", "neox,"))  # a row per control (issue 26)
    assert regime.count("fails: its held-out pretraining-mixture loss falls") == 2  # 12-step teachers: still learning
    assert "Teacher + UT" in (smoke / results / "report" / "tables" / "h6.md").read_text()
    assert {f.stem for f in figures} >= {"recovery", "train_loss", "mtbench_categories"}
    for table in tables:
        rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
        assert len(rows) >= 3 and "nan" not in table.read_text().lower(), table
    ok(snakemake("--report", "report.html", "--configfile", "config/smoke.yaml", cwd=smoke))
    html = (smoke / "report.html").read_text(errors="replace")
    assert "Table 3 of the paper" in html and "Figure 2 of the paper" in html


PROGRESS = re.compile(r"^\S+ \S+ .+: [\d,.]+(/[\d,.]+)? \S+.* \| elapsed \d", re.M)  # a kept.progress line


def test_smoke_rule_logs_show_progress_and_models_carry_cards(smoke):
    """Issue 14: every long job's rule log has progress lines (the first and the last are always written), lm-eval's
    bars arrive as lines, and every exported student carries a model card, evaluated ones with their scores."""
    from kept.card import MARK, front_matter
    from kept.grid import is_control

    results = smoke / yaml.safe_load((smoke / "config/smoke.yaml").read_text())["results"]
    logs = results / "logs"
    for pattern in ("data/pretrain_teacher-*.log", "train/*.log", "convert/*.log", "eval_code/*.log",
                    "mtbench_answer/*.log", "mtbench_judge/*.log", "eval_longctx/*.log"):
        files = sorted(logs.glob(pattern))
        assert files, pattern
        for path in files:
            assert PROGRESS.search(path.read_text()), f"{path}: no progress line"
    harness = (next(iter(sorted(logs.glob("eval_harness/*.log"))))).read_text()
    assert "\r" not in harness and re.search(r"Running loglikelihood requests: 100%.*\]$", harness, re.M)
    models = sorted(results.glob("*/init-*/model")) + sorted(results.glob("*/*/model")) + \
        sorted(results.glob("*/*/snapshots/step-*"))
    # the regime control (ut@teacher) is the teacher retrained in its own format: no student, so no card (issue 26)
    models = [m for m in models if not is_control(m.parent.name)]
    assert len(models) > 10
    for model in models:
        text = (model / "README.md").read_text()
        meta = front_matter(text)
        assert MARK in text and meta["library_name"] == "transformers", model
    evaluated = sorted(results.glob("*/*/model_card.md"))
    assert evaluated
    for card in evaluated:
        text = card.read_text()
        assert "## Evaluation" in text and text == (card.parent / "model" / "README.md").read_text(), card


def _changed_run(smoke: Path, tmp_path: Path, change) -> list[dict]:
    """Dry run after editing the smoke config in place (key order kept, as a user editing one value would)."""
    config = yaml.safe_load((smoke / "config/smoke.yaml").read_text())
    changed = copy.deepcopy(config)
    change(changed)
    assert changed != config
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    return parse_jobs(ok(snakemake("-n", "--configfile", str(path), cwd=smoke)))


DEPENDANT = "Input files updated by another job"


def _models(job: dict) -> set[str]:
    """The methods of a job's trained students (kept.grid: any init, corpus, seed), or its other model names."""
    from kept.grid import parse

    names = {job["wildcards"][k] for k in ("model", "method") if k in job["wildcards"]}
    return {parse(n).method if parse(n) else n for n in names}


@pytest.mark.slow
def test_changing_xkd_z_lr_reruns_only_xkd_z_and_dependants(smoke, tmp_path):
    def change(cfg):
        per_method = cfg["train"]["per_method"]
        lr = (per_method.get("xkd_z") or {}).get("lr") or cfg["train"]["common"]["lr"]
        per_method["xkd_z"] = {**(per_method.get("xkd_z") or {}), "lr": 0.5 * float(lr)}

    jobs = _changed_run(smoke, tmp_path, change)
    roots = [j for j in jobs if DEPENDANT not in j["reason"]]
    # the only jobs rerun for their own sake are the XKD-z trainings (every seed and corpus ablation of XKD-z),
    # in every variant, for changed params
    assert {(j["rule"], m) for j in roots for m in _models(j)} == {("train", "xkd_z")}, roots
    assert {j["wildcards"]["method"] for j in roots} >= {"xkd_z", "xkd_z.s1235"}
    assert all("Params have changed" in j["reason"] for j in roots)
    variants = yaml.safe_load((smoke / "config/smoke.yaml").read_text())["variants"]
    assert {j["wildcards"]["variant"] for j in roots} == set(variants)
    # everything else reruns only because an input is rebuilt, and nothing of another model is touched
    for job in jobs:
        assert _models(job) <= {"xkd_z"}, f"{job['rule']} {job['wildcards']} reruns ({job['reason']})"
    assert any(j["rule"].startswith("report_") for j in jobs) and any(j["rule"] == "eval_harness" for j in jobs)


@pytest.mark.slow
def test_changing_one_familys_xkd_z_lr_reruns_only_that_family(smoke, tmp_path):
    """variants.<name>.train.per_method: one family's (the smoke's GPT-NeoX variant's) XKD-z learning rate reruns
    that variant's XKD-z students and what depends on them, and nothing of another variant but the report."""
    def change(cfg):
        lr = cfg["train"]["common"]["lr"]
        cfg["variants"]["neox"]["train"] = {"per_method": {"xkd_z": {"lr": 0.5 * float(lr)}}}

    jobs = _changed_run(smoke, tmp_path, change)
    roots = [j for j in jobs if DEPENDANT not in j["reason"]]
    assert {(j["rule"], j["wildcards"]["variant"]) for j in roots} == {("train", "neox")}, roots
    assert {_models(j) == {"xkd_z"} for j in roots} == {True}
    assert all("Params have changed" in j["reason"] for j in roots)
    for job in jobs:
        assert job["wildcards"].get("variant", "neox") == "neox" and _models(job) <= {"xkd_z"}, (
            f"{job['rule']} {job['wildcards']} reruns ({job['reason']})")
    assert any(j["rule"].startswith("report_") for j in jobs) and any(j["rule"] == "eval_harness" for j in jobs)


@pytest.mark.slow
def test_fast_path_lr_reruns_only_the_fast_path(smoke, tmp_path):
    """train.fast.lr is the fast-path students' own rate: it reruns their trainings (params) and what depends on
    them, nothing of the matched-budget grid."""
    def change(cfg):
        cfg["train"]["fast"]["lr"] = 1.0e-4

    from kept.grid import parse

    def fast(name: str) -> bool:
        return bool(parse(name) and parse(name).stop)

    jobs = _changed_run(smoke, tmp_path, change)
    roots = [j for j in jobs if DEPENDANT not in j["reason"]]
    assert roots and all(j["rule"] == "train" and fast(j["wildcards"]["method"]) for j in roots), roots
    assert {j["wildcards"]["method"] for j in roots} == {"xkd_z@exact-parity", "xkd_z@exact-parity.s1235"}
    assert all("Params have changed" in j["reason"] for j in roots)
    for job in jobs:
        names = {job["wildcards"][k] for k in ("model", "method") if k in job["wildcards"]}
        assert all(fast(n) for n in names), f"{job['rule']} {job['wildcards']} reruns ({job['reason']})"


@pytest.mark.slow
def test_adding_a_variant_adds_only_its_jobs(smoke, tmp_path):
    def change(cfg):
        first = next(iter(cfg["variants"]))
        cfg["variants"]["extra"] = copy.deepcopy(cfg["variants"][first])
        teachers = cfg.get("world", {}).get("teachers")
        if isinstance(teachers, dict) and first in teachers:  # a toy variant needs its teacher recipe
            teachers["extra"] = copy.deepcopy(teachers[first])

    jobs = _changed_run(smoke, tmp_path, change)
    own = [j for j in jobs if j["wildcards"].get("variant") == "extra"]
    assert {"convert", "train"} <= {j["rule"] for j in own}
    for job in jobs:
        if job in own:
            continue
        assert "variant" not in job["wildcards"] and DEPENDANT in job["reason"], (
            f"adding a variant reruns {job['rule']} {job['wildcards']} ({job['reason']})")


@pytest.mark.slow
def test_adding_an_init_adds_only_its_students(smoke, tmp_path):
    """train.init as a list (the init x method grid): the new mapping's students are trained (and their recovery
    curves evaluated) under their own names; nothing of the existing students reruns, only the report."""
    def change(cfg):
        cfg["train"]["init"] = ["paper", "exact"]

    jobs = _changed_run(smoke, tmp_path, change)
    own = [j for j in jobs if "@exact" in j["wildcards"].get("method", "") + j["wildcards"].get("model", "")]
    assert {"train", "eval_recovery"} <= {j["rule"] for j in own}
    config = yaml.safe_load((smoke / "config/smoke.yaml").read_text())
    assert {(j["wildcards"]["variant"], j["wildcards"]["method"]) for j in own if j["rule"] == "train"} == {
        (v, f"{m}@exact{s}") for v in config["variants"] for m in config["train"]["methods"] for s in ("", ".s1235")}
    for job in jobs:
        if job not in own:
            assert job["rule"] == "all" or job["rule"].startswith("report_"), f"{job['rule']} {job['wildcards']}"


def _metrics(run: Path) -> dict[str, object]:
    """Every metric a smoke run produced: the report tables (CSV, as written) and the per-model summaries (the
    grid evaluations, the recovery snapshots and the fidelity reports), keyed by their path in the results."""
    results = run / yaml.safe_load((run / "config/smoke.yaml").read_text())["results"]
    found: dict[str, object] = {}
    for path in sorted((results / "report" / "tables").glob("*.csv")):
        found[str(path.relative_to(results))] = path.read_text()
    patterns = ["*/eval/*/*.json", "*/recovery/*/step-*.json", "*/init-*/model/fidelity.json"]
    for path in sorted(p for pattern in patterns for p in results.glob(pattern)):
        found[str(path.relative_to(results))] = json.loads(path.read_text())
    return found


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_over_two_smoke_runs(smoke, tmp_path):
    """Issue 8: determinism. A second smoke run in a fresh copy gives the same numbers, byte for byte in the
    tables and equal in every summary (the first run is the shared ``smoke`` fixture)."""
    second = tmp_path / "second"
    copy_workflow(second)
    ok(snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=second, timeout=3000))
    first, again = _metrics(smoke), _metrics(second)
    assert len(first) >= 30 and any(k.endswith("h6.csv") for k in first), sorted(first)
    assert sorted(first) == sorted(again)
    differing = [key for key in first if first[key] != again[key]]
    assert not differing, differing
