"""What an alert threshold gives, on the stays the model was validated on: for an administrator about to set one.

The bundle keeps every held-out stay's calibrated risk and outcome (`predictions.parquet`, the `test` split, scored
by the model the service serves). At a threshold t: the warnings per 100 discharges, their PPV (and the number
needed to evaluate, 1/PPV) and the share of readmissions they catch, each with a Wilson 95% interval. A threshold
outside the risks seen there is refused: nothing says what it would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.stats import binomtest


@dataclass(frozen=True)
class Validation:
    """The held-out stays' risks and outcomes, loaded once."""

    risks: list[float]
    labels: list[int]

    @classmethod
    def of(cls, bundle_path: Path, primary: str) -> Validation | None:
        path = bundle_path / "predictions.parquet"
        column = f"score:{primary}"
        if not path.is_file():
            return None
        table = pq.read_table(path)
        if column not in table.column_names or "label" not in table.column_names:
            return None
        test = table.filter(pc.equal(table.column("split"), "test"))
        risks, labels = test.column(column).to_pylist(), test.column("label").to_pylist()
        pairs = [(r, y) for r, y in zip(risks, labels, strict=True) if r is not None and y is not None]
        return cls([r for r, _ in pairs], [int(y) for _, y in pairs]) if pairs else None

    @property
    def span(self) -> tuple[float, float]:
        return min(self.risks), max(self.risks)

    def at(self, threshold: float) -> dict:
        """The figures at `threshold` (warnings are the risks at or above it), with Wilson 95% intervals."""
        n = len(self.risks)
        flagged = [y for r, y in zip(self.risks, self.labels, strict=True) if r >= threshold]
        tp, positives = sum(flagged), sum(self.labels)
        out = {"stays": n, "readmitted": positives, "warned": len(flagged),
               "alerts_per_100": _share(len(flagged), n, 100), "ppv": _share(tp, len(flagged)),
               "sensitivity": _share(tp, positives)}
        ppv = out["ppv"]
        out["nne"] = None if ppv is None or not ppv["estimate"] else round(1 / ppv["estimate"], 2)
        return out


def _share(k: int, n: int, scale: float = 1.0) -> dict | None:
    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"estimate": round(k / n * scale, 4), "ci": [round(ci.low * scale, 4), round(ci.high * scale, 4)]}


__all__ = ["Validation"]
