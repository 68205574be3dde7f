"""Run :func:`kept.train.train` in this process or as a multi-process job through a launcher.

All three paths end in the same entry point (``kept train``, i.e. :func:`kept.train.train`); the launchers only set
the process-group environment that accelerate reads:

* ``none``       -- in this process (one device; the toy world on CPU);
* ``torchrun``   -- ``torch.distributed.run --nproc-per-node N`` (DDP; on CPU accelerate picks gloo);
* ``accelerate`` -- ``accelerate launch --config_file FILE`` (one GPU, FSDP, DeepSpeed ZeRO-3 offload: the files
  under profiles/accelerate/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from kept.atomic import write_json
from kept.errors import ConfigError, KeptError
from kept.train.config import TrainConfig

LAUNCHERS = ("none", "torchrun", "accelerate")


def launch_command(cfg_file: Path, *, launcher: str, num_processes: int = 1,
                   accelerate_config: str | None = None, port: int | None = None) -> list[str]:
    """The command line that runs ``kept train --config cfg_file`` under ``launcher`` ("none": the entry point
    itself, in a process of its own)."""
    entry = ["-m", "kept.cli", "train", "--config", str(cfg_file)]
    if launcher == "none":
        return [sys.executable, *entry]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc-per-node={num_processes}"]
        cmd += [f"--master-port={port}"] if port else ["--standalone"]
        return cmd + entry
    if launcher == "accelerate":
        if not accelerate_config:
            raise ConfigError("train launcher 'accelerate' needs an accelerate config file")
        if not Path(accelerate_config).is_file():
            raise ConfigError(f"{accelerate_config}: accelerate config file not found")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
        if num_processes > 1:
            cmd += ["--num_processes", str(num_processes)]
        return cmd + entry
    raise ConfigError(f"train launcher {launcher!r}: expected one of {LAUNCHERS}")


def launch(cfg: TrainConfig, *, launcher: str = "none", num_processes: int = 1,
           accelerate_config: str | None = None, log_file: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` with ``launcher``; returns the summary (read back from ``work_dir/summary.json``).
    ``launcher="none"`` trains in this process."""
    if launcher == "none":
        if num_processes != 1:
            raise ConfigError(f"train launcher 'none' runs one process, num_processes is {num_processes}")
        from kept.train.trainer import train

        return train(cfg)
    proc = start(cfg, launcher=launcher, num_processes=num_processes, accelerate_config=accelerate_config,
                 log_file=log_file)
    return finish(proc, cfg)


def start(cfg: TrainConfig, *, launcher: str = "none", num_processes: int = 1,
          accelerate_config: str | None = None, log_file: str | None = None) -> subprocess.Popen:
    """Start the training job of ``cfg`` under ``launcher`` as a child process (``none``: one plain process)
    and return it; :func:`finish` waits for it."""
    if launcher == "none" and num_processes != 1:
        raise ConfigError(f"train launcher 'none' runs one process, num_processes is {num_processes}")
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / "launch_config.json"
    write_json(cfg_file, cfg.to_dict())
    (work / "summary.json").unlink(missing_ok=True)
    cmd = launch_command(cfg_file, launcher=launcher, num_processes=num_processes,
                         accelerate_config=accelerate_config)
    env = None
    if launcher == "torchrun" and not torch.cuda.is_available():
        # accelerate's flag for data parallelism over CPU processes (gloo); an accelerate launcher sets its own
        env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    out = open(log_file, "a") if log_file else None  # noqa: SIM115 - handed to the child, closed here
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env)
    finally:
        if out:
            out.close()


def finish(proc: subprocess.Popen, cfg: TrainConfig) -> dict[str, Any]:
    """Wait for a job from :func:`start`; its summary, or a KeptError naming the command if it failed."""
    code = proc.wait()
    if code != 0:
        raise KeptError(f"training job for {cfg.output} failed with exit code {code}: {' '.join(proc.args)}")
    return json.loads((Path(cfg.work_dir) / "summary.json").read_text())
