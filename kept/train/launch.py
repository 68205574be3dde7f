"""Run :func:`kept.train.train` in this process or as a multi-process, multi-node job through a launcher.

All paths end in the same entry point (``kept train``, i.e. :func:`kept.train.train`); the launchers only set the
process-group environment that accelerate reads:

* ``none``       -- in this process (one device; the toy world on CPU);
* ``torchrun``   -- ``torch.distributed.run --nnodes M --nproc-per-node N`` (DDP; on CPU accelerate picks gloo);
* ``accelerate`` -- ``accelerate launch --config_file FILE`` (one GPU, FSDP2, DeepSpeed: profiles/accelerate/).

Several nodes (``num_nodes`` > 1) use a static rendezvous: every node runs one launcher with the same settings and
its own node rank, and the launcher of node 0 hosts the rendezvous at ``master_addr:port``. Given a node rank, this
module runs that one node's launcher (the one-machine rehearsal runs two, on 127.0.0.1); without one it wraps the
launcher in ``srun`` inside a SLURM allocation (:func:`srun_command`): one launcher per node, node rank
``$SLURM_NODEID``, rendezvous on the node that runs srun, which is the first node of the allocation (the batch
host). A job whose rank dies ends at once: the launcher's monitor sees its worker exit, stops the node's other
workers, and a rank on another node blocked in a collective fails when its peers' connections close, or at the
latest after ``collective_timeout_s``; :func:`finish` then names the rank that died.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from kept.atomic import write_json
from kept.errors import ConfigError, KeptError
from kept.train.config import TrainConfig

LAUNCHERS = ("none", "torchrun", "accelerate")
DEFAULT_PORT = 29500
# placeholders of srun_command, expanded by the shell of each node's task
SLURM_NODE_RANK = "@SLURM_NODEID@"
SLURM_MASTER = "@SLURM_LAUNCH_NODE_IPADDR@"


def launch_command(cfg_file: Path, *, launcher: str, num_processes: int = 1, num_nodes: int = 1,
                   node_rank: int | str | None = None, master_addr: str | None = None, port: int | None = None,
                   accelerate_config: str | None = None,
                   rank_log_dir: str | None = None) -> list[str]:
    """The command line that runs ``kept train --config cfg_file`` under ``launcher`` on one node
    ("none": the entry point itself, in a process of its own). ``num_processes`` is per node; with
    ``num_nodes`` > 1, ``node_rank`` and ``master_addr`` name this node and the rendezvous host (node 0).
    ``rank_log_dir``: torchrun also writes each rank's stdout/stderr there."""
    entry = ["-m", "kept.cli", "train", "--config", str(cfg_file)]
    if num_nodes < 1 or num_processes < 1:
        raise ConfigError(f"train: num_nodes {num_nodes} and num_processes {num_processes} must be >= 1")
    if launcher == "none":
        if num_nodes != 1 or num_processes != 1:
            raise ConfigError(f"train launcher 'none' runs one process, asked for {num_nodes} node(s) x "
                              f"{num_processes} process(es); use torchrun or accelerate")
        return [sys.executable, *entry]
    if num_nodes > 1 and (node_rank is None or not master_addr):
        raise ConfigError(f"train: {num_nodes} nodes need this node's rank and the rendezvous address of node 0")
    if num_nodes > 1:
        port = port or DEFAULT_PORT
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={num_nodes}",
               f"--nproc-per-node={num_processes}", "--monitor-interval=0.5"]
        if num_nodes > 1:
            cmd += [f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={port}"]
        else:
            cmd += [f"--master-port={port}"] if port else ["--standalone"]
        if rank_log_dir:
            cmd += [f"--log-dir={rank_log_dir}", "--tee=3"]  # per-rank files, and the rule log still sees it
        return cmd + entry
    if launcher == "accelerate":
        if not accelerate_config:
            raise ConfigError("train launcher 'accelerate' needs an accelerate config file")
        if not Path(accelerate_config).is_file():
            raise ConfigError(f"{accelerate_config}: accelerate config file not found")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
        if num_processes * num_nodes > 1:
            cmd += ["--num_processes", str(num_processes * num_nodes)]  # accelerate counts all nodes' processes
        if num_nodes > 1:
            cmd += ["--num_machines", str(num_nodes), "--machine_rank", str(node_rank),
                    "--main_process_ip", str(master_addr), "--main_process_port", str(port)]
        elif port:
            cmd += ["--main_process_port", str(port)]
        return cmd + entry
    raise ConfigError(f"train launcher {launcher!r}: expected one of {LAUNCHERS}")


def srun_command(node_cmd: list[str], *, num_nodes: int, gpus_per_node: int = 0) -> list[str]:
    """Wrap one node's launcher command (built with ``node_rank=SLURM_NODE_RANK, master_addr=SLURM_MASTER``) in
    ``srun``: one task per node of the allocation, each expanding its own node rank; ``--kill-on-bad-exit`` ends
    every node's launcher as soon as one exits non-zero."""
    script = "exec " + shlex.join(node_cmd)
    script = script.replace(SLURM_NODE_RANK, '"$SLURM_NODEID"').replace(SLURM_MASTER, '"$SLURM_LAUNCH_NODE_IPADDR"')
    cmd = ["srun", f"--nodes={num_nodes}", f"--ntasks={num_nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
           "--label"]
    if gpus_per_node:
        cmd += [f"--gpus-per-task={gpus_per_node}"]
    return cmd + ["bash", "-c", script]


def launch(cfg: TrainConfig, *, launcher: str = "none", num_processes: int = 1, num_nodes: int = 1,
           accelerate_config: str | None = None, log_file: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` with ``launcher``; returns the summary (read back from ``work_dir/summary.json``).
    ``launcher="none"`` trains in this process; ``num_nodes`` > 1 runs one launcher per node of the SLURM
    allocation this runs in (srun)."""
    if launcher == "none":
        if num_processes != 1 or num_nodes != 1:
            raise ConfigError(f"train launcher 'none' runs one process, asked for {num_nodes} node(s) x "
                              f"{num_processes} process(es); use torchrun or accelerate")
        from kept.train.trainer import train

        return train(cfg)
    proc = start(cfg, launcher=launcher, num_processes=num_processes, num_nodes=num_nodes,
                 accelerate_config=accelerate_config, log_file=log_file, slurm=num_nodes > 1)
    return finish(proc, cfg, log_file=log_file)


def start(cfg: TrainConfig, *, launcher: str = "none", num_processes: int = 1, num_nodes: int = 1,
          node_rank: int | None = None, master_addr: str | None = None, port: int | None = None,
          accelerate_config: str | None = None, log_file: str | None = None, slurm: bool = False,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the training job of ``cfg`` (or, with ``node_rank``, one node's part of it) under ``launcher`` as a
    child process and return it; :func:`finish` waits for it. ``slurm``: all nodes through srun. Per-rank logs go
    to ``<log_file>.ranks/``."""
    if launcher == "none" and (num_processes != 1 or num_nodes != 1):
        raise ConfigError(f"train launcher 'none' runs one process, asked for {num_nodes} node(s) x "
                          f"{num_processes} process(es); use torchrun or accelerate")
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / "launch_config.json"
    write_json(cfg_file, cfg.to_dict())  # the same settings for every rank of every node
    if node_rank in (None, 0):
        (work / "summary.json").unlink(missing_ok=True)
    cpu = not torch.cuda.is_available()
    rank_logs = f"{log_file}.ranks" if log_file and launcher == "torchrun" else None
    if slurm:
        if num_nodes < 2:
            raise ConfigError(f"train: srun across nodes needs num_nodes >= 2, got {num_nodes}")
        import shutil

        if shutil.which("srun") is None:
            raise ConfigError(f"train: num_nodes {num_nodes} runs one launcher per node with srun, which is not on "
                              "PATH: run it inside a SLURM allocation (profiles/slurm), or set num_nodes 1")
        node = launch_command(cfg_file, launcher=launcher, num_processes=num_processes, num_nodes=num_nodes,
                              node_rank=SLURM_NODE_RANK, master_addr=SLURM_MASTER, port=port,
                              accelerate_config=accelerate_config,
                              rank_log_dir=f"{rank_logs}/node{SLURM_NODE_RANK}" if rank_logs else None)
        cmd = srun_command(node, num_nodes=num_nodes, gpus_per_node=0 if cpu else num_processes)
    else:
        cmd = launch_command(cfg_file, launcher=launcher, num_processes=num_processes, num_nodes=num_nodes,
                             node_rank=node_rank, master_addr=master_addr, port=port,
                             accelerate_config=accelerate_config,
                             rank_log_dir=f"{rank_logs}/node{node_rank}" if rank_logs and num_nodes > 1 else rank_logs)
    child_env = {**os.environ, **(env or {})}
    if launcher == "torchrun" and cpu:
        # accelerate's flag for data parallelism over CPU processes (gloo). Not for an accelerate launcher: there
        # the flag would drop a DeepSpeed set-up (DeepSpeed's CPU accelerator runs without it)
        child_env["ACCELERATE_USE_CPU"] = "true"
    out = open(log_file, "a") if log_file else None  # noqa: SIM115 - handed to the child, closed here
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=child_env)
        proc.log_offset = out.tell() if out else 0  # type: ignore[attr-defined]  # finish reads this run's part
        return proc
    finally:
        if out:
            out.close()


# torchrun's failure report: "[0]:\n  time : ...\n  host : ...\n  rank : 1 (local_rank: 1)\n  exitcode : -9 ..."
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?host\s*:\s*(\S+)\s*rank\s*:\s*(\d+) "
                         r"\(local_rank: (\d+)\)\s*exitcode\s*:\s*(-?\d+)", re.S)


_SRUN_LABEL = re.compile(r"^\s*\d+: ", re.M)
_KEPT_ERROR = re.compile(r"kept train: error: (.*)$", re.M)


def failed_rank(log_text: str) -> str | None:
    """The launcher's first observed failure in ``log_text`` as one phrase ("rank 1 (local rank 1 on host h)
    exited with signal SIGKILL"), or None when the log names none."""
    log_text = _SRUN_LABEL.sub("", log_text)  # srun --label prefixes each line with its task number
    found = _ROOT_CAUSE.findall(log_text)
    if not found:
        return None
    # several launchers (nodes) report into one log under srun: a rank killed by a signal is the cause, the ranks
    # whose collectives then failed (exit code 1) are its consequence
    killed = [f for f in found if int(f[3]) < 0]
    host, rank, local, code = (killed or found)[0]
    code_i = int(code)
    how = f"was killed by signal {_signal_name(-code_i)}" if code_i < 0 else f"exited with code {code_i}"
    return f"rank {rank} (local rank {local} on host {host}) {how}"


def _signal_name(num: int) -> str:
    import signal

    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def finish(proc: subprocess.Popen, cfg: TrainConfig, *, log_file: str | None = None) -> dict[str, Any]:
    """Wait for a job from :func:`start`; its summary, or a one-line KeptError naming the rank that died (read
    from the launcher's report in ``log_file``) or else the command."""
    code = proc.wait()
    if code != 0:
        text = ""
        if log_file and Path(log_file).is_file():
            with open(log_file, "rb") as fh:
                fh.seek(getattr(proc, "log_offset", 0))
                text = fh.read().decode(errors="replace")
        who = failed_rank(text)
        errors = _KEPT_ERROR.findall(text)  # a rank that stopped on a KeptError said why in one line
        if who and errors:
            raise KeptError(f"training job for {cfg.output} failed: {who}: {errors[-1].strip()}")
        if who:
            raise KeptError(f"training job for {cfg.output} failed: {who}; launcher exit code {code}; rerun to "
                            f"resume from the last state in {Path(cfg.work_dir) / 'resume'}")
        raise KeptError(f"training job for {cfg.output} failed with exit code {code}: {' '.join(map(str, proc.args))}")
    summary = Path(cfg.work_dir) / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}
