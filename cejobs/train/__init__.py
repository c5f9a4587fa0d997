"""Training commands: `python -m cejobs.train diffusion ...` and `python -m cejobs.train classifier ...`.

The defaults are the paper's recipes (docs/models.md); the shipped digits models were trained
with the commands listed there.
"""

from cejobs.train.classifier import ClassifierTrainConfig, pgd, pgd_l2, train_classifier
from cejobs.errors import TrainError
from cejobs.train.diffusion import DiffusionTrainConfig, train_diffusion

__all__ = [
    "ClassifierTrainConfig",
    "DiffusionTrainConfig",
    "TrainError",
    "pgd",
    "pgd_l2",
    "train_classifier",
    "train_diffusion",
]
