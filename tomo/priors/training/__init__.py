"""Training of the diffusion prior (``tomo train``): one loop for 1 CPU, 1 GPU or many (torchrun).

Modules by role: :mod:`.options` (``TrainOptions``, validation, learning-rate schedule),
:mod:`.distributed` (process group, per-step generators), :mod:`.ema`, :mod:`.state`
(checkpoints and the training record), :mod:`.log` (``log.csv``, loss plot), :mod:`.loop`
(:func:`train`).
"""

from .log import plot_loss, read_log
from .loop import load_ema_prior, train
from .options import TrainOptions
from .state import cpu_model

__all__ = ["TrainOptions", "train", "read_log", "plot_loss", "cpu_model", "load_ema_prior"]
