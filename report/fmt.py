"""Number formats of ``ner-report`` and the context every section writer reads."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .render import md_escape

if TYPE_CHECKING:
    from .runs import RunData


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def fmt_int(x) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def fmt_params(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def fmt_duration(s) -> str:
    if s is None:
        return "n/a"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_rate(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def fmt_interval(iv: dict | None) -> str:
    """``[low, high]`` in percent, or ``n/a``."""
    return "n/a" if not iv else f"[{pct(iv['low'])}, {pct(iv['high'])}]"


def fmt_points(x: float) -> str:
    """A signed difference of two scores in percentage points."""
    return f"{100 * x:+.2f}"


def fmt_p(p: float, resamples: int) -> str:
    return f"< {1 / resamples:.3g}" if p == 0 else f"{p:.3f}"


@dataclass
class Context:
    """What every section reads: the analysis of one evaluation set, its runs by name (in report order), the
    CLI options and the figures.

    ``set_name`` is set when the report has several evaluation sets (headings then name the set);
    ``level`` is the heading level of the section writers (3 inside a set's own section).
    """

    an: dict
    runs: dict[str, RunData]
    args: argparse.Namespace
    figures: dict[str, str]
    set_name: str | None = None
    level: int = 2

    @property
    def models(self) -> dict[str, dict]:
        return self.an["models"]

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    @property
    def nested(self) -> bool:
        """Inside the section of a set after the first: explanations given once already are left out."""
        return self.level > 2

    @property
    def resamples(self) -> int:
        return getattr(self.args, "bootstrap", 0) or 0

    def title(self, number, text: str) -> str:
        """A section heading: ``"3. Headline"``, with `` — set **A**`` when the report has several sets."""
        suffix = f" — set **{md_escape(self.set_name)}**" if self.set_name and self.level == 2 else ""
        return f"{number}. {text}{suffix}"
