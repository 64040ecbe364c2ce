"""The shared types of the method layer: problems, options, outputs, and the registry class.

:class:`MethodRegistry` maps names to :class:`ReconMethod` entries; the built-in methods
(:mod:`tomo.methods.classical`, :mod:`tomo.methods.diffusion`) import these types from here, and
:mod:`tomo.methods.registry` builds the default registry from them, so the import graph has no
circle: ``base`` <- ``classical`` / ``diffusion`` <- ``registry``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from operators.geometry import FanBeam2D, ParallelBeam2D

__all__ = ["ReconProblem", "ReconMethod", "MethodOutput", "MethodOption", "MethodRegistry"]


@dataclass
class ReconProblem:
    """What a method needs besides the data: geometry, device, dose, and a shared projector."""

    geometry: ParallelBeam2D | FanBeam2D
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    i0: float | None = None
    progress: bool = True
    _operator: Any = field(default=None, repr=False)

    @property
    def operator(self):
        """:class:`operators.CTProjector` of the geometry on the device (built once)."""
        if self._operator is None:
            from operators import CTProjector

            self._operator = CTProjector(self.geometry, device=self.device)
        return self._operator


@dataclass
class MethodOutput:
    """What a method may return instead of a bare mu tensor: the image and its uncertainty.

    Attributes
    ----------
    mu : torch.Tensor [B, H, W]
        Attenuation [1/mm] (for sampling methods with several samples: the posterior mean).
    std : torch.Tensor [B, H, W] or None
        Pixel-wise posterior standard deviation [1/mm], calibrated (see
        :func:`tomo.methods.diffusion.std_calibration`); None when the method has none.
    """

    mu: torch.Tensor
    std: torch.Tensor | None = None


@dataclass(frozen=True)
class MethodOption:
    """A method's keyword option and its command-line flag.

    Attributes
    ----------
    flag : str
        Command-line flag, e.g. ``"--iterations"``.
    dest : str
        Keyword passed to the method's function.
    type : callable
        Parser of the flag's text (``int``, ``float``, ``str``...).
    help : str
        Help text (say the unit and the default).
    choices : tuple, optional
        Allowed values.
    """

    flag: str
    dest: str
    type: Callable = str
    help: str = ""
    choices: tuple | None = None


@dataclass(frozen=True)
class ReconMethod:
    """A named reconstruction method: ``run(sinogram [B,V,D], problem, **options) -> mu [B,H,W]``."""

    name: str
    run: Callable
    help: str
    options: tuple[MethodOption, ...] = ()
    #: slices per call when the caller gives no batch size (bounds memory)
    batch_size: int = 16

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.dest for o in self.options)


class MethodRegistry(dict):
    """Method name -> :class:`ReconMethod`; :meth:`register` adds one (see the module docstring)."""

    def register(
        self, name: str, run: Callable, *, help: str, options=(), batch_size: int = 16, replace: bool = False
    ) -> ReconMethod:
        """Add a method; ``ValueError`` if the name is taken (unless ``replace``). Returns the entry."""
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"method name must be a non-empty word, got {name!r}")
        if name in self and not replace:
            raise ValueError(f"method {name!r} is already registered; pass replace=True to replace it")
        if not callable(run):
            raise TypeError(f"run must be callable, got {type(run).__name__}")
        opts = tuple(options)
        for o in opts:
            if not isinstance(o, MethodOption) or not o.flag.startswith("--"):
                raise TypeError(f"options must be MethodOption with a --flag, got {o!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        entry = ReconMethod(name, run, help, opts, int(batch_size))
        self[name] = entry
        return entry

    def get_method(self, name: str) -> ReconMethod:
        """The method ``name``; ``ValueError`` listing the choices."""
        if name not in self:
            raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(self))}")
        return self[name]
