"""Training of the diffusion prior (``tomo train``): one loop for 1 CPU, 1 GPU or many (torchrun)."""
from .loop import TrainOptions, cpu_model, load_ema_prior, plot_loss, read_log, train

__all__ = ["TrainOptions", "train", "read_log", "plot_loss", "cpu_model", "load_ema_prior"]
