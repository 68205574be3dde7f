"""Training: UT, XKD-h and XKD-z on matched budgets, the offline teacher cache and the Appendix-A pilot.

    from kept.train import TrainConfig, train
"""

from kept.train.config import TrainConfig
from kept.train.trainer import train

__all__ = ["TrainConfig", "train"]
