"""Drift of a current table against a reference, column by column, in vectorised NumPy.

Numeric columns get the population stability index (PSI) and the two-sample
Kolmogorov–Smirnov test; categorical ones get Pearson's chi-squared test and the
Jensen–Shannon distance (PSI and Jensen–Shannon work on both). Text, booleans and integer
codes with at most 10 distinct values are categorical. Numeric values are binned on
Sturges' edges over both tables together (a column with 20 distinct values or fewer bins
by value); a bin empty on one side is given a tiny share so the PSI stays finite. These are
the tests, binning and verdicts of Evidently's DataDriftPreset, which renders the report
(``components.core.drift_report``); the statistics themselves are computed here, on every
row. Datetimes, and text whose values are mostly distinct (identifiers), are not tested:
the report lists them.

A column's verdict is its *deciding* test's: PSI for numeric columns and Jensen–Shannon for
categorical ones by default, since p-values of KS and chi-squared flag negligible shifts
once tables hold millions of rows. With ``segment``, every column is also judged within
each segment value both tables have with at least ``min_segment_rows`` rows, and a column
that drifted within any segment has drifted. The dataset has drifted when at least
``drift_share`` of its columns have.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from components.core.errors import ConveyorError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "TESTS",
    "ColumnDrift",
    "DriftReport",
    "DriftSettings",
    "compare_tables",
    "drift_kind",
]

Kind = Literal["numeric", "categorical"]
Test = Literal["psi", "ks", "chisquare", "jensenshannon"]
TESTS: tuple[Test, ...] = ("psi", "ks", "chisquare", "jensenshannon")
DEFAULT_THRESHOLDS = {"psi": 0.1, "ks": 0.05, "chisquare": 0.05, "jensenshannon": 0.1}
# When a score is drift, as Evidently's tests decide: distances at or above their threshold,
# KS p-values at or below it, chi-squared p-values below it.
DRIFTS_WHEN = {"psi": ">=", "jensenshannon": ">=", "ks": "<=", "chisquare": "<"}
_CATEGORICAL_ONLY, _NUMERIC_ONLY = {"chisquare"}, {"ks"}
_FEW_VALUES = 20  # numeric columns with this many distinct reference values bin by value
_CODES = 10  # integer columns with this many distinct reference values are categories
_EXACT_KS = 10_000  # samples up to this size get scipy's exact KS p-value
_IDENTIFIER_SHARE = 0.5  # text with more distinct values than this share of rows is an id


@dataclass(frozen=True)
class DriftSettings:
    """Thresholds and deciding tests.

    Attributes:
        thresholds: Per test, replacing ``DEFAULT_THRESHOLDS``; see ``DRIFTS_WHEN``.
        numeric_test: The test that decides a numeric column's verdict.
        categorical_test: The test that decides a categorical column's verdict.
        drift_share: The share of drifted columns at which the dataset has drifted.
        min_segment_rows: Segments with fewer rows in either table are not tested.
    """

    thresholds: dict[str, float] = field(default_factory=dict)
    numeric_test: Test = "psi"
    categorical_test: Test = "jensenshannon"
    drift_share: float = 0.5
    min_segment_rows: int = 100

    def __post_init__(self) -> None:
        unknown = sorted(set(self.thresholds) - set(TESTS))
        if unknown:
            raise ConveyorError(f"drift thresholds: unknown test(s) {unknown}; known: {TESTS}")
        for test, value in self.thresholds.items():
            number = value if isinstance(value, int | float) else None
            if (
                isinstance(value, bool)
                or number is None
                or not math.isfinite(number)
                or number <= 0
            ):
                raise ConveyorError(f"drift threshold {test}={value!r}: expected a number above 0")
        if self.numeric_test not in set(TESTS) - _CATEGORICAL_ONLY:
            raise ConveyorError(f"drift: {self.numeric_test!r} cannot decide numeric columns")
        if self.categorical_test not in set(TESTS) - _NUMERIC_ONLY:
            raise ConveyorError(
                f"drift: {self.categorical_test!r} cannot decide categorical columns"
            )
        if not 0 < self.drift_share <= 1:
            raise ConveyorError(f"drift_share {self.drift_share} must be in (0, 1]")

    def threshold(self, test: str) -> float:
        return float(self.thresholds.get(test, DEFAULT_THRESHOLDS[test]))

    def drifted(self, test: str, value: float) -> bool:
        limit, rule = self.threshold(test), DRIFTS_WHEN[test]
        return bool(
            value >= limit if rule == ">=" else value <= limit if rule == "<=" else value < limit
        )

    def deciding_test(self, kind: Kind) -> Test:
        return self.numeric_test if kind == "numeric" else self.categorical_test


@dataclass(frozen=True)
class ColumnDrift:
    """One column's tests, in one segment or over the whole table (``segment`` None)."""

    column: str
    kind: Kind
    scores: dict[str, float]  # test -> statistic (PSI, JS distance) or p-value (KS, chi2)
    deciding_test: str
    drifted: bool
    segment: str | None = None
    reference_rows: int = 0
    current_rows: int = 0
    reference_nulls: float = 0.0  # share of rows without a value
    current_nulls: float = 0.0

    @property
    def score(self) -> float:
        return self.scores[self.deciding_test]


@dataclass(frozen=True)
class DriftReport:
    """Every test result; a column has drifted when it drifted over the whole table or
    within any segment (a shift in one customer segment is drift, even when the whole
    table's distribution hardly moves). ``skipped`` says what was not tested, and why."""

    columns: list[ColumnDrift]  # the whole table's, then each segment's
    settings: DriftSettings
    skipped: list[str] = field(default_factory=list)

    @property
    def overall(self) -> list[ColumnDrift]:
        return [result for result in self.columns if result.segment is None]

    @property
    def kinds(self) -> dict[str, Kind]:
        return {result.column: result.kind for result in self.overall}

    def drifted_in(self, column: str) -> list[str]:
        """Where ``column`` drifted: "all" for the whole table, then segment values."""
        return [
            result.segment or "all"
            for result in self.columns
            if result.column == column and result.drifted
        ]

    @property
    def drifted_columns(self) -> list[str]:
        return [result.column for result in self.overall if self.drifted_in(result.column)]

    @property
    def drifted_share(self) -> float:
        return len(self.drifted_columns) / len(self.overall) if self.overall else 0.0

    @property
    def dataset_drifted(self) -> bool:
        return self.drifted_share >= self.settings.drift_share

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_drifted": self.dataset_drifted,
            "drifted_share": self.drifted_share,
            "drift_share": self.settings.drift_share,
            "drifted_columns": {name: self.drifted_in(name) for name in self.drifted_columns},
            "skipped": self.skipped,
            "columns": [asdict(result) for result in self.columns],
        }


@dataclass(frozen=True)
class _Pair:
    reference: pd.Series
    current: pd.Series
    column: str
    kind: Kind
    segment: str | None = None


def compare_tables(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: DriftSettings | None = None,
    segment: str | None = None,
    exclude: tuple[str, ...] = (),
) -> DriftReport:
    """Every shared column of ``current`` against ``reference`` but ``exclude`` and
    ``segment`` (which rows are grouped by)."""
    settings = settings or DriftSettings()
    columns = _shared_columns(reference, current, segment, exclude)
    kinds, skipped = _kinds(reference, columns)
    pairs = [_Pair(reference[c], current[c], c, kind) for c, kind in kinds.items()]
    if segment:
        segment_pairs, segment_skips = _segment_pairs(reference, current, kinds, segment, settings)
        pairs, skipped = pairs + segment_pairs, skipped + segment_skips
    # NumPy's sorts and histograms release the GIL: columns are tested side by side. The
    # warnings filter is process-wide, so it is set here, around the threads, not in them.
    with warnings.catch_warnings(), ThreadPoolExecutor(_workers(pairs)) as pool:
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy: "exact KS unsuccessful"
        results = list(pool.map(lambda pair: _column_drift(pair, settings), pairs))
    return DriftReport(results, settings, skipped)


def _workers(pairs: list[_Pair]) -> int:
    return max(1, min(len(pairs), os.cpu_count() or 1))


def _shared_columns(
    reference: pd.DataFrame, current: pd.DataFrame, segment: str | None, exclude: tuple[str, ...]
) -> list[str]:
    for name, table in (("reference", reference), ("current", current)):
        duplicated = sorted(set(table.columns[table.columns.duplicated()]))
        if duplicated:
            raise ConveyorError(f"{name} table: duplicated column name(s) {duplicated}")
    # An excluded column (the label, which inference inputs lack) may be on one side only.
    only_reference = sorted(set(reference.columns) - set(current.columns) - set(exclude))
    only_current = sorted(set(current.columns) - set(reference.columns) - set(exclude))
    if only_reference or only_current:
        raise ConveyorError(
            "reference and current tables have different columns: "
            f"only in reference {only_reference}, only in current {only_current}"
        )
    if segment and segment not in reference.columns:
        raise ConveyorError(f"segment column {segment!r} is not in the tables")
    for name in exclude:
        if name not in reference.columns and name not in current.columns:
            raise ConveyorError(f"excluded column {name!r} is not in the tables")
    columns = [name for name in reference.columns if name != segment and name not in exclude]
    if not columns:
        raise ConveyorError("the tables have no columns to compare")
    return columns


def _kinds(reference: pd.DataFrame, columns: list[str]) -> tuple[dict[str, Kind], list[str]]:
    """Each testable column's kind, from the reference; and a line for each left out."""
    kinds: dict[str, Kind] = {}
    skipped = []
    for name in columns:
        values = reference[name]
        if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(
            values
        ):
            skipped.append(f"{name}: a time, not tested for drift")
            continue
        kind = drift_kind(values)
        if kind == "categorical" and _identifier_like(values):
            skipped.append(
                f"{name}: mostly distinct text ({values.nunique():,} values), an identifier"
            )
            continue
        kinds[name] = kind
    return kinds, skipped


def _identifier_like(values: pd.Series) -> bool:
    distinct = values.nunique()
    return distinct > _FEW_VALUES and distinct > _IDENTIFIER_SHARE * values.count()


def _segment_pairs(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, Kind],
    segment: str,
    settings: DriftSettings,
) -> tuple[list[_Pair], list[str]]:
    """A pair per column and per segment value both tables have often enough; and a line
    for each segment left out (too small, new, or rows without a segment)."""
    reference_groups = dict(tuple(reference.groupby(segment, sort=True, observed=True)))
    pairs, skipped = [], []
    for table, name in ((reference, "reference"), (current, "current")):
        missing = int(table[segment].isna().sum())
        if missing:
            skipped.append(f"{segment}: {missing:,} {name} rows have no segment")
    for value, current_rows in current.groupby(segment, sort=True, observed=True):
        reference_rows = reference_groups.get(value)
        if reference_rows is None:
            skipped.append(
                f"{segment}={value}: new in the current table ({len(current_rows):,} rows)"
            )
            continue
        smallest = min(len(reference_rows), len(current_rows))
        if smallest < settings.min_segment_rows:
            skipped.append(
                f"{segment}={value}: {smallest:,} rows, below the {settings.min_segment_rows} "
                "a segment needs"
            )
            continue
        for column, kind in kinds.items():
            if reference_rows[column].notna().any() and current_rows[column].notna().any():
                pairs.append(
                    _Pair(reference_rows[column], current_rows[column], column, kind, str(value))
                )
            else:
                skipped.append(f"{column} in {segment}={value}: no values on one side")
    return pairs, skipped


def _column_drift(pair: _Pair, settings: DriftSettings) -> ColumnDrift:
    reference, current = pair.reference.dropna(), pair.current.dropna()
    if reference.empty or current.empty:
        raise ConveyorError(
            f"column {pair.column!r}: no values to compare in the "
            f"{'reference' if reference.empty else 'current'} table"
        )
    if pair.kind == "numeric":
        scores = _numeric_scores(*_finite_numbers(reference, current, pair.column))
    else:
        scores = _categorical_scores(reference, current)
    test = settings.deciding_test(pair.kind)
    return ColumnDrift(
        column=pair.column,
        kind=pair.kind,
        scores=scores,
        deciding_test=test,
        drifted=settings.drifted(test, scores[test]),
        segment=pair.segment,
        reference_rows=len(pair.reference),
        current_rows=len(pair.current),
        reference_nulls=1 - len(reference) / len(pair.reference),
        current_nulls=1 - len(current) / len(pair.current),
    )


def _finite_numbers(
    reference: pd.Series, current: pd.Series, column: str
) -> tuple[np.ndarray, np.ndarray]:
    if not pd.api.types.is_numeric_dtype(current) or pd.api.types.is_bool_dtype(current):
        raise ConveyorError(
            f"column {column!r}: numeric in the reference, {current.dtype} in the current table"
        )
    arrays = reference.to_numpy(float), current.to_numpy(float)
    for name, values in zip(("reference", "current"), arrays, strict=True):
        if not np.isfinite(values).all():
            raise ConveyorError(
                f"column {column!r}: holds infinities in the {name} table; drift cannot be "
                "measured on them"
            )
    return arrays


def drift_kind(values: pd.Series) -> Kind:
    """Numbers are numeric, except integer codes with at most 10 distinct values (a rating,
    a day of week), which drift as categories do. Unlike the schema's ``column_kind``,
    booleans are categories here: their drift is a change of shares."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "categorical"
    if pd.api.types.is_integer_dtype(values) and values.nunique() <= _CODES:
        return "categorical"
    return "numeric"


def _numeric_scores(reference: np.ndarray, current: np.ndarray) -> dict[str, float]:
    reference, current = np.sort(reference), np.sort(current)
    distinct = np.count_nonzero(np.diff(reference)) + 1
    if distinct <= _FEW_VALUES:
        keys = np.union1d(reference, current)
        reference_counts = _counts(reference, keys)
        current_counts = _counts(current, keys)
    else:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        reference_counts = np.histogram(reference, edges)[0]
        current_counts = np.histogram(current, edges)[0]
    return {
        "psi": _psi(reference_counts, current_counts),
        "ks": _ks_p_value(reference, current),
        "jensenshannon": _jensen_shannon(reference_counts, current_counts),
    }


def _ks_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    """The two-sided Kolmogorov–Smirnov p-value of two sorted samples: scipy's exact one for
    samples of up to 10,000 values; else scipy's asymptotic one (the Kolmogorov distribution
    at the samples' effective size), except where Smirnov's limit already puts it below
    1e-12, far past any threshold, whose exact tail is slow and no more useful."""
    if max(len(reference), len(current)) <= _EXACT_KS:
        return float(stats.ks_2samp(reference, current).pvalue)
    distance = _ks_distance(reference, current)
    m, n = float(len(reference)), float(len(current))
    effective = np.round(m * n / (m + n))
    limit = float(stats.kstwobign.sf(distance * np.sqrt(effective)))
    if limit < 1e-12:
        return limit
    return float(np.clip(stats.kstwo.sf(distance, effective), 0.0, 1.0))


def _ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest gap between the empirical distribution functions of sorted ``a`` and
    ``b``: both are steps, so it is reached at a data point, taken at its last copy."""
    last_a = np.flatnonzero(np.append(a[1:] != a[:-1], True))
    last_b = np.flatnonzero(np.append(b[1:] != b[:-1], True))
    at_a = (last_a + 1) / len(a) - np.searchsorted(b, a[last_a], side="right") / len(b)
    at_b = np.searchsorted(a, b[last_b], side="right") / len(a) - (last_b + 1) / len(b)
    return float(max(np.abs(at_a).max(), np.abs(at_b).max()))


def _categorical_scores(reference: pd.Series, current: pd.Series) -> dict[str, float]:
    # Counted as the values are: 1 and 1.0 are one category (an integer code column read
    # as floats because a value is missing), 1 and "1" two.
    reference_counts, current_counts = reference.value_counts(), current.value_counts()
    keys = reference_counts.index.union(current_counts.index, sort=False)
    reference_array = reference_counts.reindex(keys, fill_value=0).to_numpy(float)
    current_array = current_counts.reindex(keys, fill_value=0).to_numpy(float)
    return {
        "psi": _psi(reference_array, current_array),
        "chisquare": _chi_square(reference_array, current_array),
        "jensenshannon": _jensen_shannon(reference_array, current_array),
    }


def _counts(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(keys, values), minlength=len(keys))


def _shares(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum()


def _without_zeros(shares: np.ndarray) -> np.ndarray:
    """Empty bins get a share far below any observed one (1e-4, or a millionth of the
    smallest observed share when that is smaller still), so logarithms stay finite."""
    smallest = shares[shares > 0].min()
    return np.where(shares > 0, shares, smallest / 1e6 if smallest <= 1e-4 else 1e-4)


def _psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    expected = _without_zeros(_shares(reference_counts))
    actual = _without_zeros(_shares(current_counts))
    return float(np.sum((expected - actual) * np.log(expected / actual)))


def _jensen_shannon(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """The Jensen–Shannon distance (natural logarithm): the square root of the divergence."""
    p, q = _shares(reference_counts), _shares(current_counts)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    return float(np.sqrt(max((kl(p) + kl(q)) / 2, 0.0)))


def _chi_square(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """The p-value of current counts against reference shares scaled to the current total."""
    expected = reference_counts * (current_counts.sum() / reference_counts.sum())
    if (expected == 0).any():  # a category the reference never had: drift beyond doubt
        return 0.0
    return float(stats.chisquare(current_counts, expected).pvalue)
