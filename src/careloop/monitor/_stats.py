"""The statistics behind the monitor's drift alerts: reference bins, PSI, and the tests that keep noise quiet.

PSI (population stability index) compares a period's distribution of a column with the reference's over the same
bins: sum over bins of (p_period - p_ref) * ln(p_period / p_ref), with half a count added to every bin so that an
empty bin stays finite. Numeric columns are cut at the reference's deciles, except that a column with few values
(a flag, a small count, a constant) gets a bin per value and a value as common as a decile gets a bin of its own;
categorical ones keep the reference's commonest categories and pool the rest; missing values are a bin of their
own, so a column that stops being recorded shows up in its PSI as well as in its missingness.

PSI grows with sampling noise: with K bins its expected value when nothing changed is about
(K - 1) * (1/n_period + 1/n_reference), 0.1 for 100 stays against a large reference. So a PSI alone is no alarm;
the monitor also asks whether the two samples could come from one distribution (a chi-square test of
homogeneity on the same bins, sparse bins merged until each expects 5 stays). Stays are clustered in patients
(one patient's repeated stays look alike), so each sample counts as many observations as it has patients, not
stays: the counts are scaled by patients / stays before the test (a design-effect correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import binomtest, chi2, norm

MISSING = "(missing)"
OTHER = "(other)"
Z95 = 1.959963984540054
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class Binning:
    """How one column is cut into bins, fixed on the reference: numeric (interior `edges`; a value v falls in bin
    `searchsorted(edges, v, "right")`) or categorical (`categories`, then OTHER); the last bin is MISSING."""

    column: str
    kind: str  # "numeric" | "categorical"
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of bins, the missing bin included."""
        if self.kind == "numeric":
            return len(self.edges) + 2
        return len(self.categories) + 2

    def labels(self) -> list[str]:
        if self.kind == "numeric":
            return [*_numeric_labels(self.edges), MISSING]
        return [*self.categories, OTHER, MISSING]

    def counts(self, values: Any) -> np.ndarray:
        """Counts per bin (length `size`) of an Arrow or NumPy column."""
        if self.kind == "numeric":
            x = _floats(values)
            ok = np.isfinite(x)
            out = np.bincount(np.searchsorted(np.asarray(self.edges, dtype=float), x[ok], side="right"),
                              minlength=len(self.edges) + 1)
            return np.append(out, int((~ok).sum())).astype(np.int64)
        text = _texts(values)
        index = {c: i for i, c in enumerate(self.categories)}
        other, missing = len(self.categories), len(self.categories) + 1
        codes = np.fromiter((missing if v is None else index.get(v, other) for v in text), dtype=np.int64,
                            count=len(text))
        return np.bincount(codes, minlength=self.size).astype(np.int64)

    def to_dict(self) -> dict:
        return {"column": self.column, "kind": self.kind, "edges": list(self.edges),
                "categories": list(self.categories), "labels": self.labels()}

    @classmethod
    def from_dict(cls, d: dict) -> Binning:
        return cls(d["column"], d["kind"], tuple(d.get("edges") or ()), tuple(d.get("categories") or ()))


def _num(x: float) -> str:
    return f"{x:.4g}"


def _above(x: float) -> float:
    """The next float above x: edges x and _above(x) make a bin [x, _above(x)) that holds x alone."""
    return float(np.nextafter(x, np.inf))


def _numeric_labels(edges: tuple[float, ...]) -> list[str]:
    """One readable label per bin of `searchsorted(edges, v, "right")`: a bin [x, _above(x)) reads "= x" and the
    bin after it "> x" (not ">= x + 5e-324"), so single-value bins stay legible in the report."""
    if not edges:
        return ["all values"]
    bounds = [-np.inf, -np.inf, *edges, np.inf]  # bounds[i], bounds[i + 1], bounds[i + 2]: the edge before, lo, hi
    return [_bin_label(*bounds[i:i + 3]) for i in range(len(edges) + 1)]


def _bin_label(before: float, lo: float, hi: float) -> str:
    """Label of the bin [lo, hi), `before` being the edge below lo."""
    if lo == -np.inf:
        return f"< {_num(hi)}"
    if hi == _above(lo):
        return f"= {_num(lo)}"
    if lo == _above(before):
        return f"> {_num(before)}" + ("" if hi == np.inf else f" to < {_num(hi)}")
    return f">= {_num(lo)}" if hi == np.inf else f"{_num(lo)} to < {_num(hi)}"


def _floats(values: Any) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if pa.types.is_boolean(values.type):
            values = pc.cast(values, pa.int8())
        return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
    return np.asarray(values, dtype=float)


def _texts(values: Any) -> list[str | None]:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if pa.types.is_boolean(values.type):
            return [None if v is None else ("true" if v else "false") for v in values.to_pylist()]
        values = values.to_pylist()
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        else:
            out.append(str(v))
    return out


def is_numeric(values: Any) -> bool:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        t = values.type
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)
    return np.asarray(values).dtype.kind in "iuf"


def make_binning(column: str, values: Any, *, bins: int = 10, max_categories: int = 20) -> Binning:
    """Bins fixed on the reference values of one column: for a numeric column, one bin per value when it takes at
    most `bins` values (flags, small counts, constants), else deciles (or `bins` quantiles) with any value as
    common as a bin kept apart; for any other, the commonest categories (each at least 1% of the rows, at most
    `max_categories`)."""
    if is_numeric(values):
        x = _floats(values)
        x = x[np.isfinite(x)]
        if x.size == 0:
            return Binning(column, "numeric")
        return Binning(column, "numeric", numeric_edges(x, bins))
    text = [t for t in _texts(values) if t is not None]
    if not text:
        return Binning(column, "categorical")
    cats, counts = np.unique(np.asarray(text, dtype=object), return_counts=True)
    order = np.lexsort((cats.astype(str), -counts))
    keep = [str(cats[i]) for i in order if counts[i] >= 0.01 * len(text)][:max_categories]
    return Binning(column, "categorical", categories=tuple(keep))


def numeric_edges(x: np.ndarray, bins: int = 10) -> tuple[float, ...]:
    """Interior edges for finite reference values `x`.

    Quantile edges alone fail on few-valued columns: a flag set in under 10% of the stays has every decile at 0, so
    0 and 1 shared a bin and no shift of the flag could show. So a column with at most `bins` values gets a bin per
    value, with the gaps below, between and above them as bins of their own (a value never seen in the reference
    still shows); otherwise the quantiles, and every value holding a bin's share of the rows (a point mass such as
    0 in a mostly-zero column) gets a bin of its own."""
    values, counts = np.unique(x, return_counts=True)
    if values.size <= bins:
        points = values
        cuts: np.ndarray = np.array([])
    else:
        points = values[counts >= x.size / bins]
        cuts = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1], method="linear")
    edges = {float(e) for e in cuts} | {float(v) for v in points} | {_above(float(v)) for v in points}
    return tuple(sorted(edges))


def occupied_bins(counts: Any) -> int:
    """Bins that the reference puts stays in: the ones sampling noise can move (see `psi_noise`)."""
    return int(np.count_nonzero(np.asarray(counts)))


def proportions(counts: np.ndarray) -> np.ndarray:
    """Bin shares with half a count added to every bin (finite logs for empty bins)."""
    c = np.asarray(counts, dtype=float) + 0.5
    return c / c.sum()


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of `current` bin counts against `reference` ones (bins empty in both are
    left out).

    >>> psi(np.array([500, 500]), np.array([50, 50]))
    0.0
    >>> round(psi(np.array([500, 300, 200]), np.array([20, 30, 50])), 3)
    0.54
    """
    r, c = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    keep = (r + c) > 0
    if keep.sum() < 2 or c.sum() == 0 or r.sum() == 0:
        return 0.0
    pr, pcur = proportions(r[keep]), proportions(c[keep])
    return float(np.sum((pcur - pr) * np.log(pcur / pr)))


def missing_psi(ref_missing: int, ref_rows: int, cur_missing: int, cur_rows: int) -> float:
    """PSI of the missing/recorded split alone: a 10-point change in missingness is large for a value that is
    usually recorded and small for one that is usually missing.

    >>> round(missing_psi(0, 5000, 20, 100), 2), round(missing_psi(530, 1000, 43, 100), 2)
    (1.59, 0.04)
    """
    return psi(np.array([ref_missing, ref_rows - ref_missing]), np.array([cur_missing, cur_rows - cur_missing]))


def psi_noise(bins: int, n_reference: float, n_current: float) -> float:
    """PSI expected from sampling noise alone when nothing changed: (K - 1) * (1/n1 + 1/n2).

    >>> round(psi_noise(11, 5000, 100), 3)
    0.102
    """
    if n_reference <= 0 or n_current <= 0:
        return float("nan")
    return max(bins - 1, 1) * (1 / n_reference + 1 / n_current)


def _merge_sparse(table: np.ndarray, min_expected: float = MIN_EXPECTED) -> np.ndarray:
    """Adjacent columns of a 2 x K table merged until every cell expects at least `min_expected`."""
    total = table.sum()
    rows = table.sum(axis=1)
    cols: list[np.ndarray] = []
    acc = np.zeros(2)
    for j in range(table.shape[1]):
        acc = acc + table[:, j]
        expected = acc.sum() * rows / total
        if expected.min() >= min_expected:
            cols.append(acc)
            acc = np.zeros(2)
    if acc.sum() > 0:
        if cols:
            cols[-1] = cols[-1] + acc
        else:
            cols.append(acc)
    return np.column_stack(cols) if cols else table[:, :0]


@dataclass(frozen=True)
class Homogeneity:
    statistic: float
    df: int
    p_value: float


def homogeneity_test(reference: np.ndarray, current: np.ndarray, n_eff_reference: float,
                     n_eff_current: float) -> Homogeneity:
    """Chi-square test that two binned samples come from one distribution, each sample weighted to its effective
    size (patients), sparse bins merged (expected >= 5 per cell)."""
    r, c = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if r.sum() == 0 or c.sum() == 0:
        return Homogeneity(0.0, 0, 1.0)
    r = r * (min(n_eff_reference, r.sum()) / r.sum())
    c = c * (min(n_eff_current, c.sum()) / c.sum())
    t = _merge_sparse(np.vstack([r, c]))
    if t.shape[1] < 2:
        return Homogeneity(0.0, 0, 1.0)
    expected = t.sum(axis=1, keepdims=True) * t.sum(axis=0, keepdims=True) / t.sum()
    stat = float(np.sum((t - expected) ** 2 / expected))
    df = t.shape[1] - 1
    return Homogeneity(stat, df, float(chi2.sf(stat, df)))


def two_proportion_p(k1: float, n1: float, k2: float, n2: float, n_eff1: float, n_eff2: float) -> float:
    """Two-sided p-value that two proportions k1/n1 and k2/n2 are equal, with effective sample sizes."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    p1, p2 = k1 / n1, k2 / n2
    m1, m2 = min(n_eff1, n1), min(n_eff2, n2)
    pooled = (p1 * m1 + p2 * m2) / (m1 + m2)
    if pooled <= 0 or pooled >= 1:
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / m1 + 1 / m2))
    return float(2 * norm.sf(abs(p1 - p2) / se))


def se_from_ci(ci: Any) -> float | None:
    """Standard error implied by a 95% interval (its width / 3.92), or None."""
    if not ci or ci[0] is None or ci[1] is None:
        return None
    se = (float(ci[1]) - float(ci[0])) / (2 * Z95)
    return se if se > 0 else None


def z_p(difference: float, se: float, *, alternative: str = "two-sided") -> float:
    """p-value of a difference with standard error `se` (normal approximation)."""
    if se is None or not se > 0 or not math.isfinite(difference):
        return 1.0
    z = difference / se
    if alternative == "greater":
        return float(norm.sf(z))
    if alternative == "less":
        return float(norm.cdf(z))
    return float(2 * norm.sf(abs(z)))


def binomial_p(k: int, n: int, p0: float, *, alternative: str = "greater") -> float:
    """Exact binomial p-value of k successes in n trials against proportion p0."""
    if n <= 0:
        return 1.0
    return float(binomtest(int(min(k, n)), int(n), float(p0), alternative=alternative).pvalue)


def wilson(k: float, n: float, z: float = Z95) -> list[float] | None:
    """Wilson score interval of k/n."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, mid - half), min(1.0, mid + half)]


def poisson_rate(k: int, n: float, alpha: float = 0.05) -> list[float] | None:
    """Exact (Garwood) interval of a rate: k events over an exposure of n, as events per unit of n. Alerts per
    discharge are a rate, not a share: a patient-view card during a stay and a warning at its discharge are two
    alerts for one discharge, so k may exceed n, where a proportion's (Wilson) interval has no meaning.

    >>> [round(x, 3) for x in poisson_rate(0, 1)], [round(x, 3) for x in poisson_rate(5, 1)]
    ([0.0, 3.689], [1.623, 11.668])
    """
    from scipy.stats import chi2

    if n <= 0:
        return None
    lo = 0.0 if k == 0 else float(chi2.ppf(alpha / 2, 2 * k)) / 2
    hi = float(chi2.ppf(1 - alpha / 2, 2 * (k + 1))) / 2
    return [lo / n, hi / n]


@dataclass
class Family:
    """Every test of one report, so that alerts can be decided at one family-wise level (Bonferroni)."""

    alpha: float
    count: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.count += n
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n

    @property
    def level(self) -> float:
        """The per-test level: alpha over the number of tests in the report."""
        return self.alpha / max(self.count, 1)
