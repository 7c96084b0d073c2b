"""The one shape every interval result takes, so reports can print any figure the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy.special import ndtri


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval, the sample size behind it and how it was made."""

    value: float
    lo: float
    hi: float
    n: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; NaN and infinite bounds (nothing known) become None."""
        return {
            "value": _finite(self.value),
            "lo": _finite(self.lo),
            "hi": _finite(self.hi),
            "n": int(self.n),
            "method": self.method,
        }


def _finite(x: float) -> float | None:
    """A float, or None where JSON could not carry it."""
    x = float(x)
    return x if math.isfinite(x) else None


def z_value(conf: float) -> float:
    """The standard normal quantile for a two-sided interval at level `conf`."""
    if not 0.0 < conf < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {conf}")
    return float(ndtri(0.5 + conf / 2.0))
