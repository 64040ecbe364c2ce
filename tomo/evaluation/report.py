"""The record and report schema every benchmark shares.

* :class:`Record` -- one method on one case (slice x configuration or task): PSNR, SSIM,
  wall time, network evaluations, settings.
* :func:`summarise` -- :class:`Summary` rows: mean (and std) over the cases of each
  (configuration, method), in first-seen order.
* JSON: ``Record.as_dict`` / ``Summary.as_dict``; the keys are those of the committed reports
  (``slice`` for the case, ``n``, ``seconds_per_slice``, ``nfe``, ``psnr_each`` ...).
* Markdown: :func:`markdown_table`, :func:`settings_table` (the diffusion and task sections),
  :func:`mean_table` and :func:`per_case_tables` (the classical benchmark), and
  :func:`write_section`, which rewrites one marked block of a shared Markdown file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Record",
    "Summary",
    "summarise",
    "markdown_table",
    "settings_table",
    "mean_table",
    "per_case_tables",
    "write_section",
    "write_json",
]


@dataclass
class Record:
    """One method on one case.

    Attributes
    ----------
    case : str
        The slice (JSON key ``slice``).
    config : str
        Configuration (``parallel-30`` ...) or image task (``deblur`` ...).
    method : str
    psnr : float
        dB, on the [-1000, 1000] HU window.
    ssim : float
    seconds : float
        Wall time of the method call.
    network_evaluations : int
        Prior network evaluations (times the number of posterior samples); 0 for classical methods.
    settings : dict
        The method's options (empty: its defaults).
    coverage : float or None
        Methods with a posterior std (several samples): fraction of tissue pixels whose truth lies
        in ``mean +- 1.645 std`` (:func:`tomo.evaluation.scores.interval_coverage`).
    error_std_quantiles : list or None
        Its 0.001 ... 0.999 quantiles (:func:`tomo.evaluation.scores.error_to_std_quantiles`): the
        coverage at any calibration factor.
    error_std_q90 : float or None
        The 90 % quantile of ``|mean - truth| / std`` over tissue pixels (``/ 1.645``: the factor
        that would calibrate this slice's std).
    """

    case: str
    config: str
    method: str
    psnr: float
    ssim: float
    seconds: float
    network_evaluations: int = 0
    settings: dict = field(default_factory=dict)
    coverage: float | None = None
    error_std_q90: float | None = None
    error_std_quantiles: list | None = None

    def as_dict(self) -> dict:
        out = {
            "config": self.config,
            "method": self.method,
            "slice": self.case,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "seconds": self.seconds,
            "network_evaluations": self.network_evaluations,
            "settings": self.settings,
        }
        if self.coverage is not None:
            out.update(
                coverage=self.coverage,
                error_std_q90=self.error_std_q90,
                error_std_quantiles=self.error_std_quantiles,
            )
        return out


@dataclass
class Summary:
    """Mean over the cases one method ran on in one configuration (std: population std)."""

    config: str
    method: str
    settings: dict
    n: int
    psnr: float
    psnr_std: float
    ssim: float
    ssim_std: float
    seconds: float
    network_evaluations: int
    cases: list
    psnr_each: list
    ssim_each: list
    coverage: float | None = None

    def as_dict(self) -> dict:
        return {
            **({} if self.coverage is None else {"coverage": self.coverage}),
            "config": self.config,
            "method": self.method,
            "settings": self.settings,
            "n": self.n,
            "psnr": self.psnr,
            "psnr_std": self.psnr_std,
            "ssim": self.ssim,
            "ssim_std": self.ssim_std,
            "seconds_per_slice": self.seconds,
            "nfe": self.network_evaluations,
            "slices": self.cases,
            "psnr_each": self.psnr_each,
            "ssim_each": self.ssim_each,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        """Read :meth:`as_dict` output (JSON of earlier runs, whose std / ssim_each may be absent)."""
        return cls(
            d["config"],
            d["method"],
            d.get("settings", {}),
            d["n"],
            d["psnr"],
            d.get("psnr_std", float("nan")),
            d["ssim"],
            d.get("ssim_std", float("nan")),
            d["seconds_per_slice"],
            d.get("nfe", 0),
            d.get("slices", []),
            d.get("psnr_each", []),
            d.get("ssim_each", []),
            d.get("coverage"),
        )


def summarise(records: list[Record]) -> list[Summary]:
    """One :class:`Summary` per (config, method), in the order first seen; settings of the first record."""
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        groups.setdefault((r.config, r.method), []).append(r)
    out = []
    for (config, method), rs in groups.items():
        p, s = np.array([r.psnr for r in rs]), np.array([r.ssim for r in rs])
        cov = [r.coverage for r in rs if r.coverage is not None]
        out.append(
            Summary(
                config,
                method,
                rs[0].settings,
                len(rs),
                float(p.mean()),
                float(p.std()),
                float(s.mean()),
                float(s.std()),
                float(np.mean([r.seconds for r in rs])),
                int(np.mean([r.network_evaluations for r in rs])),
                [r.case for r in rs],
                [r.psnr for r in rs],
                [r.ssim for r in rs],
                float(np.mean(cov)) if len(cov) == len(rs) else None,
            )
        )
    return out


def write_json(
    path: str | Path,
    meta: dict,
    summaries: list[Summary],
    records: list[Record] | None = None,
    summary_key: str = "runs",
) -> None:
    """``{"meta": ..., summary_key: [Summary], "records": [Record]}`` as indented JSON."""
    data = {"meta": meta, summary_key: [s.as_dict() for s in summaries]}
    if records is not None:
        data["records"] = [r.as_dict() for r in records]
    Path(path).write_text(json.dumps(data, indent=1))


# ----- Markdown ------------------------------------------------------------------------------------
def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table (cells already formatted)."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


def _settings_text(settings: dict, empty: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or empty


def settings_table(summaries: list[Summary], first: str = "config", empty: str = "default") -> list[str]:
    """config | method | settings | n | PSNR | SSIM | s / slice | network evals."""
    return markdown_table(
        [first, "method", "settings", "n", "PSNR [dB]", "SSIM", "s / slice", "network evals"],
        [
            [
                s.config,
                s.method,
                _settings_text(s.settings, empty),
                s.n,
                f"{s.psnr:.2f}",
                f"{s.ssim:.4f}",
                f"{s.seconds:.1f}",
                s.network_evaluations,
            ]
            for s in summaries
        ],
    )


def mean_table(summaries: list[Summary]) -> list[str]:
    """configuration | method | slices | PSNR (std) | SSIM (std) | time / slice."""
    return markdown_table(
        ["configuration", "method", "slices", "PSNR [dB] (std)", "SSIM (std)", "time / slice [s]"],
        [
            [
                s.config,
                s.method,
                s.n,
                f"{s.psnr:.2f} ({s.psnr_std:.2f})",
                f"{s.ssim:.4f} ({s.ssim_std:.4f})",
                f"{s.seconds:.2f}",
            ]
            for s in summaries
        ],
    )


def per_case_tables(records: list[Record]) -> list[str]:
    """Per configuration, a slice x method table of ``PSNR / SSIM``."""
    methods = list(dict.fromkeys(r.method for r in records))
    lines = []
    for config in dict.fromkeys(r.config for r in records):
        by_case: dict[str, dict[str, Record]] = {}
        for r in records:
            if r.config == config:
                by_case.setdefault(r.case, {})[r.method] = r
        rows = [
            [name] + [f"{rs[m].psnr:.2f} / {rs[m].ssim:.3f}" if m in rs else "-" for m in methods]
            for name, rs in by_case.items()
        ]
        lines += ["", f"## Per slice: {config} (PSNR dB / SSIM)", ""] + markdown_table(["slice"] + methods, rows)
    return lines


def write_section(path: str | Path, key: str, text: str) -> None:
    """Replace (or append) the block between ``<!-- key:begin -->`` and ``<!-- key:end -->`` in ``path``.

    Several benchmarks and hand-written notes share one Markdown file (e.g.
    docs/benchmarks_diffusion.md); each benchmark rewrites only its own block.
    """
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = Path(path).read_text() if Path(path).exists() else "# Diffusion solvers: benchmarks\n\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old.rstrip() + "\n\n" + block
    Path(path).write_text(new)
