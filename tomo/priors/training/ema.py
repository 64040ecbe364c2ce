"""Exponential moving average of the weights during training."""

from __future__ import annotations

import torch


class EMA:
    """EMA of the weights with ``torch.optim.swa_utils.AveragedModel``.

    Decay at update ``k`` (1-based): ``min(max_decay, 1 - k^(-2/3))`` -- the warm-up of
    diffusers' ``EMAModel(use_ema_warmup=True, power=2/3)``, so early weights fade fast.
    (torch's AveragedModel rather than diffusers' EMAModel: importing diffusers.training_utils
    costs several seconds per process.)
    """

    def __init__(self, model: torch.nn.Module, max_decay: float):
        from torch.optim.swa_utils import AveragedModel

        self.max_decay = max_decay

        def multi_avg_fn(ema_params, params, num_averaged):
            decay = min(max_decay, 1.0 - (1.0 + float(num_averaged)) ** (-2.0 / 3.0))
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)

        self.averaged = AveragedModel(model, multi_avg_fn=multi_avg_fn)
        self.averaged.requires_grad_(False)

    @property
    def shadow_params(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.averaged.module.parameters()]

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def step(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    def meta(self) -> dict:
        return {"n_averaged": self.n_averaged, "max_decay": self.max_decay}

    def load(self, shadow: list[torch.Tensor], meta: dict) -> None:
        n = meta.get("n_averaged", meta.get("optimization_step"))  # (older files: diffusers EMAModel)
        with torch.no_grad():
            for p, v in zip(self.averaged.module.parameters(), shadow):
                p.copy_(v)
            self.averaged.n_averaged.fill_(int(n))

    def state_dict_of(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the EMA weights as parameters (buffers stay live)."""
        names = [n for n, _ in model.named_parameters()]
        sd = dict(model.state_dict())
        for name, shadow in zip(names, self.shadow_params):
            sd[name] = shadow
        return sd
