"""Training beyond one process: two "nodes" on one machine, FSDP2 and DeepSpeed ZeRO-2/3 over gloo, a rank killed
mid-step (on one node and across two), and the launcher command lines a SLURM allocation runs. Every
multi-process run uses the tiny world on CPU processes (bench/dist_gpu.sh runs the same tests on >= 2 GPUs).

Tolerance of "N processes equal one": 1e-5 on the final float32 weights (4 AdamW steps at lr 1e-3; 40 for the
resumed runs). The runs see the same global batch, but N processes form the mean gradient in another order
(each rank's mean over its rows, then an all-reduce) than one process does, which perturbs every gradient entry
by float32 rounding (relative ~1e-7). AdamW's update lr * m / (sqrt(v) + eps) passes a relative perturbation
through at relative size (its largest gain, lr / eps times the absolute perturbation, is reached for gradients
near eps = 1e-8, whose perturbations are ~1e-15), so each step moves a weight by ~1e-7 * lr more or less and the
forward passes compound it a little: measured 0.7-1.2e-7 here. 1e-5 leaves two orders of margin, while a wrong
batch split, a missing all-reduce, a rank reading another rank's rows or a shard lost on export moves weights by
~lr = 1e-3.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from kept.errors import KeptError
from kept.train import TrainConfig, train
from kept.train.launch import finish, launch, launch_command, srun_command, start
from test_train_helpers import tiny_world  # noqa: F401  (fixture)
from test_train_run import _cfg, _weights

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "profiles" / "accelerate" / "deepspeed_zero3_offload.yaml"
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _max_diff(a_dir, b_dir) -> float:
    wa, wb = _weights(a_dir), _weights(b_dir)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _common(world, **kw):
    return {"objective": "xkd_z", "student": str(world["students"]["paper"]), "teacher": str(world["teacher"]),
            "steps": 4, "lr": 1e-3, **kw}


@pytest.mark.slow
def test_two_nodes_rehearsed_on_one_machine_match_one_process(tiny_world, tmp_path):
    """Two torchrun launchers acting as two nodes (--nnodes 2, node ranks 0 and 1, static rendezvous on
    127.0.0.1, gloo), one process each, batch 2 each = one process with batch 4; every rank logs to its own file."""
    common = _common(tiny_world)
    cfg = _cfg(tiny_world, tmp_path, "nodes", batch_size=2, **common)
    port = _free_port()
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    procs = [start(cfg, launcher="torchrun", num_processes=1, num_nodes=2, node_rank=r, master_addr="127.0.0.1",
                   port=port, log_file=str(logs[r]), env=_env()) for r in (0, 1)]
    second = procs[1]
    try:
        got = finish(procs[0], cfg, log_file=str(logs[0]))
        assert finish(second, cfg, log_file=str(logs[1])) == got  # node 1 reads the same summary
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert got["world_size"] == 2 and got["distributed_type"] == "MULTI_CPU", logs[0].read_text()[-3000:]
    # torchrun's per-rank files under <rule log>.ranks/node<R>/: global ranks 0 (node 0) and 1 (node 1)
    for r in (0, 1):
        files = list(Path(f"{logs[r]}.ranks", f"node{r}").rglob("stderr.log"))
        assert len(files) == 1 and files[0].stat().st_size > 0, files
    train(_cfg(tiny_world, tmp_path, "one", batch_size=4, **common))
    assert got["tokens"] == 4 * 4 * 16
    diff = _max_diff(tmp_path / "nodes" / "model", tmp_path / "one" / "model")
    print(f"2 nodes x 1 process vs 1 process: max |dw| = {diff:.3g}")
    assert diff < TOL


@pytest.mark.slow
def test_fsdp2_two_processes_match_one(tiny_world, tmp_path):
    """FSDP2 (torch fully_shard over gloo, sharding 'fsdp2' under torchrun): 2 processes x batch 1 x 2 accumulated
    micro-batches = 1 process x batch 4, with gradient checkpointing and the chunked loss; snapshot and final
    export gather a full state dict."""
    common = _common(tiny_world, gradient_checkpointing=True, kl_chunk_size=24, snapshot_every=2)
    log = tmp_path / "fsdp.log"
    cfg = _cfg(tiny_world, tmp_path, "fsdp", batch_size=1, grad_accum=2, sharding="fsdp2", **common)
    got = finish(start(cfg, launcher="torchrun", num_processes=2, port=_free_port(), log_file=str(log), env=_env()),
                 cfg, log_file=str(log))
    assert got["world_size"] == 2 and got["distributed_type"] == "FSDP2", log.read_text()[-3000:]
    train(_cfg(tiny_world, tmp_path, "one", batch_size=4, **common))
    for sub in ("model", "snapshots/step-2"):
        diff = _max_diff(tmp_path / "fsdp" / sub, tmp_path / "one" / sub)
        print(f"FSDP2 2 processes vs 1 process, {sub}: max |dw| = {diff:.3g}")
        assert diff < TOL


@pytest.mark.slow
@pytest.mark.parametrize("profile,stage", [("deepspeed_zero2_offload", 2), ("deepspeed_zero3_offload", 3)])
def test_deepspeed_two_processes_match_one(tiny_world, tmp_path, profile, stage):
    """accelerate + DeepSpeed (CPU accelerator, gloo), the shipped profiles in float32 (bf16 autocast would round
    away the comparison): 2 processes x batch 2 = 1 process x batch 4, both through DeepSpeed (its CPU Adam
    differs from torch's AdamW by its own arithmetic, so the reference is DeepSpeed in one process). Skipped
    without deepspeed (a GPU-only dependency: requirements-gpu.txt)."""
    pytest.importorskip("deepspeed")
    import yaml

    conf = yaml.safe_load((ROOT / "profiles" / "accelerate" / f"{profile}.yaml").read_text())
    conf["mixed_precision"] = "no"
    conf_file = tmp_path / f"{profile}.yaml"
    conf_file.write_text(yaml.safe_dump(conf))
    common = _common(tiny_world)
    runs = {}
    for name, procs, batch in (("two", 2, 2), ("one", 1, 4)):
        cfg = _cfg(tiny_world, tmp_path, name, batch_size=batch, **common)
        log = tmp_path / f"{name}.log"
        runs[name] = finish(start(cfg, launcher="accelerate", num_processes=procs, accelerate_config=str(conf_file),
                                  port=_free_port(), log_file=str(log), env=_env()), cfg, log_file=str(log))
        assert (runs[name]["distributed_type"], runs[name]["zero_stage"], runs[name]["world_size"]) == \
            ("DEEPSPEED", stage, procs), log.read_text()[-3000:]
    diff = _max_diff(tmp_path / "two" / "model", tmp_path / "one" / "model")
    print(f"DeepSpeed ZeRO-{stage} 2 processes vs 1 process: max |dw| = {diff:.3g}")
    assert diff < TOL


@pytest.mark.slow
def test_a_rank_killed_on_one_node_ends_the_other_node(tiny_world, tmp_path):
    """Two-"node" rehearsal: SIGKILL the rank of node 1 mid-run. Node 1's launcher ends at once; node 0's rank,
    inside a gloo collective with the dead peer, fails when the connection drops (collective_timeout_s bounds it
    otherwise), so both launchers end within kill_bound_s; their reports in one log (as srun gathers them) name
    the killed rank."""
    kill_bound_s = 30.0
    cfg = _cfg(tiny_world, tmp_path, "nodes", batch_size=2, collective_timeout_s=60,
               **_common(tiny_world, steps=40, log_every=10, save_state_every=10))
    port, log = _free_port(), tmp_path / "job.log"
    procs = [start(cfg, launcher="torchrun", num_processes=1, num_nodes=2, node_rank=r, master_addr="127.0.0.1",
                   port=port, log_file=str(log), env=_env()) for r in (0, 1)]
    deadline, victim = time.time() + 120, None
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if any((tmp_path / "nodes" / "resume").glob("step-*")):
                victim = _worker_of_rank(procs[1].pid, 1)
                if victim:
                    break
            time.sleep(0.005)
        assert victim and all(p.poll() is None for p in procs), "the job finished before it could be killed"
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        codes = [p.wait(timeout=kill_bound_s + 30) for p in procs]
        took = time.monotonic() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with pytest.raises(KeptError) as failed:
        finish(procs[0], cfg, log_file=str(log))
    print(f"2 nodes, kill rank 1 on node 1 -> launcher exit codes {codes}, both ended {took:.2f} s after the "
          f"kill; error: {failed.value}")
    assert all(c != 0 for c in codes) and took < kill_bound_s
    assert "rank 1 (local rank 0" in str(failed.value) and "SIGKILL" in str(failed.value)


def test_srun_starts_one_launcher_per_node_with_its_own_rank(tmp_path):
    """The command a 2-node SLURM job runs (kept.train.launch.srun_command): one task per node, each expanding its
    node rank and the rendezvous address (the batch host, node 0) in its own shell."""
    import shlex
    import subprocess

    node = launch_command(tmp_path / "c.json", launcher="torchrun", num_processes=8, num_nodes=2,
                          node_rank="@SLURM_NODEID@", master_addr="@SLURM_LAUNCH_NODE_IPADDR@",
                          rank_log_dir=str(tmp_path / "train.log.ranks" / "node@SLURM_NODEID@"))
    cmd = srun_command(node, num_nodes=2, gpus_per_node=8)
    print("srun line:", shlex.join(cmd))
    assert cmd[:7] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--label",
                       "--gpus-per-task=8"]
    script = cmd[-1]
    out = subprocess.run(["bash", "-c", script.replace("exec ", "printf '%s\\n' ", 1)], capture_output=True,
                         text=True, check=True, env={"SLURM_NODEID": "1", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7",
                                                     "PATH": os.environ["PATH"]}).stdout.split("\n")
    for arg in ("--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--master-addr=10.0.0.7", "--master-port=29500",
                f"--log-dir={tmp_path / 'train.log.ranks' / 'node1'}"):
        assert arg in out, (arg, out)
    assert out[out.index("kept.cli"):out.index("kept.cli") + 4] == ["kept.cli", "train", "--config",
                                                                    str(tmp_path / "c.json")]
    # accelerate counts every node's processes
    acc = launch_command(tmp_path / "c.json", launcher="accelerate", num_processes=8, num_nodes=2, node_rank=1,
                         master_addr="10.0.0.7", accelerate_config=str(ZERO3))
    assert " --num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.7" in " ".join(acc)


def _report(rank: int, local: int, code: int) -> str:
    """torchrun's failure report (torch.distributed.elastic ChildFailedError), as it prints it."""
    return ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
            "============================================================\nkept.cli FAILED\n"
            "------------------------------------------------------------\nFailures:\n  <NO_OTHER_FAILURES>\n"
            "------------------------------------------------------------\nRoot Cause (first observed failure):\n"
            f"[0]:\n  time      : 2026-12-02_16:50:40\n  host      : node{rank}\n  rank      : {rank} "
            f"(local_rank: {local})\n  exitcode  : {code} (pid: 4242)\n  error_file: <N/A>\n"
            "============================================================\n")


def test_the_failure_line_names_the_killed_rank_among_several_reports():
    """Under srun (--label) both nodes' launchers report into one log: node 0's rank failed in a collective after
    node 1's rank was killed; the line names the killed one."""
    from kept.train.launch import failed_rank

    labelled = "".join(f"{task}: {line}\n" for task, report in ((0, _report(0, 0, 1)), (1, _report(8, 0, -9)))
                       for line in report.splitlines())
    assert failed_rank(labelled) == "rank 8 (local rank 0 on host node8) was killed by signal SIGKILL"
    assert failed_rank(_report(3, 3, 1)) == "rank 3 (local rank 3 on host node3) exited with code 1"
    assert failed_rank("no report here") is None


def test_bad_launch_settings_fail_in_one_line(tmp_path):
    from kept.errors import ConfigError

    with pytest.raises(ConfigError, match="'none' runs one process, asked for 2 node"):
        launch_command(tmp_path / "c.json", launcher="none", num_nodes=2)
    with pytest.raises(ConfigError, match="need this node's rank"):
        launch_command(tmp_path / "c.json", launcher="torchrun", num_nodes=2)
    if not shutil.which("srun"):  # several nodes outside a SLURM allocation
        cfg = TrainConfig(objective="ut", student="s", corpus="c", output=str(tmp_path / "o"), work_dir=str(tmp_path))
        with pytest.raises(ConfigError, match="srun, which is not on PATH"):
            launch(cfg, launcher="torchrun", num_processes=8, num_nodes=2)


@pytest.mark.slow
def test_slurm_profile_submits_a_two_node_training(tmp_path):
    """`snakemake -n --profile profiles/slurm --configfile config/paper.yaml` with train.num_nodes 2 (8 GPUs
    each): every training job, put through the SLURM plugin's own sbatch builders, asks for 2 nodes, one task per
    node and 16 A100s, and is an `mpi` job, so the jobstep runs the script in the batch shell and its srun
    (above) places one launcher per node."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from test_workflow import copy_workflow, ok, parse_jobs, snakemake

    wd = tmp_path / "workflow"
    copy_workflow(wd)
    (wd / "nodes2.yaml").write_text("train:\n  launcher: torchrun\n  num_nodes: 2\n  num_processes: 8\n"
                                    "  resources: {gpu: 8, mem_mb: 900000, runtime: 720}\n")
    jobs = parse_jobs(ok(snakemake("-n", "--profile", "profiles/slurm", "--configfile", "config/paper.yaml",
                                   "nodes2.yaml", "--cores", "64", cwd=wd)))
    trains = [j for j in jobs if j["rule"] == "train"]
    assert trains
    for job in trains:
        res = {k: int(v) if v.isdigit() else v for k, v in job["resources"].items()}
        fake = SimpleNamespace(resources=SimpleNamespace(get=res.get, **res), threads=8)
        params = {"run_uuid": "dry", "slurm_logfile": "slurm.log", "comment_str": "train", "workdir": None,
                  "account": "-A 'kept'", "partition": "-p 'gpu'"}
        sbatch = get_submit_command(fake, params) + set_gres_string(fake)
        for part in ("--nodes=2", "--ntasks=2", "--gpus=a100:16", "--mem 900000", "-t 720", "--cpus-per-task=8"):
            assert part in sbatch, (part, sbatch)
        assert "--ntasks-per-gpu" not in sbatch and res["mpi"] == "srun"
    print("sbatch line:", sbatch)
    pilots = [j for j in jobs if j["rule"] == "pilot"]
    assert pilots and all(j["resources"]["gpu"] == "1" for j in pilots)


def _worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of the launcher's child process that runs global rank ``rank`` (its RANK environment variable)."""
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "kept.cli" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["none", "fsdp2"])
def test_a_killed_rank_ends_the_job_and_the_rerun_resumes(tiny_world, tmp_path, sharding):
    """SIGKILL rank 1 of a 2-process job (DDP, or FSDP2 with its sharded resume state) mid-run: the launcher ends
    the whole job within kill_bound_s, the error is one line naming rank 1; resuming with another world size is
    refused naming both; rerunning with 2 processes resumes from the last saved state and ends on the weights of
    an uninterrupted (one-process, same global batch) run."""
    kill_bound_s = 30.0  # the launcher's monitor polls every 0.5 s and stops the other ranks with SIGTERM
    common = _common(tiny_world, steps=40, log_every=10, save_state_every=10)
    log = tmp_path / "job.log"
    cfg = _cfg(tiny_world, tmp_path, "job", batch_size=2, sharding=sharding, **common)
    proc = start(cfg, launcher="torchrun", num_processes=2, port=_free_port(), log_file=str(log), env=_env())
    resume = tmp_path / "job" / "resume"
    deadline = time.time() + 120
    victim = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(resume.glob("step-*")):
                victim = _worker_of_rank(proc.pid, 1)
                if victim:
                    break
            time.sleep(0.005)
        assert victim and proc.poll() is None, "the job finished before rank 1 could be killed"
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        code = proc.wait(timeout=kill_bound_s + 30)
        took = time.monotonic() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(KeptError) as failed:
        finish(proc, cfg, log_file=str(log))
    line = str(failed.value)
    print(f"[{sharding}] kill rank 1 -> launcher exit code {code} after {took:.2f} s; error: {line}")
    assert code != 0 and took < kill_bound_s
    assert "\n" not in line and "rank 1 (local rank 1" in line and "SIGKILL" in line
    assert not Path(cfg.output).exists()
    saved = sorted(int(p.name.split("-")[1]) for p in resume.glob("step-*"))
    assert saved and saved[-1] < 40

    # one process (a launched job, as FSDP2 needs a process group) finds the 2-process state and refuses it
    with pytest.raises(KeptError, match=r"saved by 2 processes, this run has 1; rerun with 2") as refused:
        finish(start(cfg, launcher="torchrun", num_processes=1, port=_free_port(), log_file=str(log), env=_env()),
               cfg, log_file=str(log))
    print(f"[{sharding}] world size 2 -> 1: {refused.value}")
    assert "\n" not in str(refused.value)

    rerun = start(cfg, launcher="torchrun", num_processes=2, port=_free_port(), log_file=str(log), env=_env())
    resumed = finish(rerun, cfg, log_file=str(log))
    assert resumed["resumed_from"] == saved[-1] and resumed["world_size"] == 2
    train(_cfg(tiny_world, tmp_path, "straight", batch_size=4, **common))
    diff = _max_diff(tmp_path / "job" / "model", tmp_path / "straight" / "model")
    print(f"[{sharding}] resumed 2-process run (from step {saved[-1]}) vs uninterrupted 1-process run: max |dw| = {diff:.3g}")
    assert diff < TOL
