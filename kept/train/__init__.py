"""Training: UT, XKD-h and XKD-z on matched budgets, the offline teacher cache and the Appendix-A pilot.

    from kept.train import TrainConfig, train
"""

from typing import Any

from kept.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name: str) -> Any:
    # the trainer (torch, transformers) loads on first use, so the workflow can read kept.train.config's settings
    # helpers while it parses without importing torch
    if name == "train":
        from kept.train.trainer import train

        return train
    raise AttributeError(f"module 'kept.train' has no attribute {name!r}")
