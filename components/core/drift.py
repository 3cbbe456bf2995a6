"""Drift of a current table against a reference, column by column, in vectorised NumPy.

Numeric columns get the population stability index (PSI) and the two-sample
Kolmogorov–Smirnov test; categorical ones get Pearson's chi-squared test and the
Jensen–Shannon distance (PSI and Jensen–Shannon work on both). Text, booleans and integer
codes with at most 10 distinct values are categorical. Numeric values are binned on
Sturges' edges over both tables together (a column with 20 distinct values or fewer bins
by value); a bin empty on one side is given a tiny share so the PSI stays finite. These are
the tests and binning of Evidently's DataDriftPreset, so verdicts agree with its report,
which renders them (``render_report``, told the same column kinds); the statistics
themselves are computed here, on whole columns.

A column's verdict is its *deciding* test's: PSI for numeric columns and Jensen–Shannon for
categorical ones by default, since p-values of KS and chi-squared flag negligible shifts
once tables hold millions of rows. The dataset has drifted when at least ``drift_share`` of
its columns have. With ``segment``, every column is also judged within each segment value,
and one that drifted within any segment has drifted.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from components.core.errors import ConveyorError
from components.core.files import write_atomically

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ColumnDrift",
    "DriftOutputs",
    "DriftReport",
    "DriftSettings",
    "TESTS",
    "drift_kind",
    "compare_tables",
    "describe",
    "detect_drift",
    "markdown",
    "render_report",
    "table_lines",
]

Test = Literal["psi", "ks", "chisquare", "jensenshannon"]
TESTS: tuple[Test, ...] = ("psi", "ks", "chisquare", "jensenshannon")
DEFAULT_THRESHOLDS = {"psi": 0.1, "ks": 0.05, "chisquare": 0.05, "jensenshannon": 0.1}
# A p-value drifts below its threshold; a distance at or above it.
_P_VALUES = {"ks", "chisquare"}
_FEW_VALUES = 20  # numeric columns with this many distinct reference values bin by value
_CODES = 10  # integer columns with this many distinct reference values are categories
_EXACT_KS = 10_000  # samples up to this size get the exact KS p-value


@dataclass(frozen=True)
class DriftSettings:
    """Thresholds and deciding tests.

    Attributes:
        thresholds: Per test: a p-value below it (ks, chisquare), or a distance at or above
            it (psi, jensenshannon), means drift.
        numeric_test: The test that decides a numeric column's verdict.
        categorical_test: The test that decides a categorical column's verdict.
        drift_share: The share of drifted columns at which the dataset has drifted.
    """

    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    numeric_test: Test = "psi"
    categorical_test: Test = "jensenshannon"
    drift_share: float = 0.5

    def __post_init__(self) -> None:
        unknown = sorted(set(self.thresholds) - set(TESTS))
        if unknown:
            raise ConveyorError(f"drift thresholds: unknown test(s) {unknown}; known: {TESTS}")
        for test in (self.numeric_test, self.categorical_test):
            if test not in TESTS:
                raise ConveyorError(f"drift: unknown deciding test {test!r}; known: {TESTS}")
        if self.categorical_test == "ks":
            raise ConveyorError("drift: ks cannot decide categorical columns")
        if self.numeric_test == "chisquare":
            raise ConveyorError("drift: chisquare cannot decide numeric columns")
        if not 0 < self.drift_share <= 1:
            raise ConveyorError(f"drift_share {self.drift_share} must be in (0, 1]")

    def threshold(self, test: str) -> float:
        return self.thresholds.get(test, DEFAULT_THRESHOLDS[test])

    def drifted(self, test: str, value: float) -> bool:
        limit = self.threshold(test)
        return bool(value < limit) if test in _P_VALUES else bool(value >= limit)


@dataclass(frozen=True)
class ColumnDrift:
    """One column's tests, in one segment or over the whole table (``segment`` None)."""

    column: str
    kind: Literal["numeric", "categorical"]
    scores: dict[str, float]  # test -> statistic (PSI, JS distance) or p-value (KS, chi2)
    deciding_test: str
    drifted: bool
    segment: str | None = None
    reference_rows: int = 0
    current_rows: int = 0

    @property
    def score(self) -> float:
        return self.scores[self.deciding_test]


@dataclass(frozen=True)
class DriftReport:
    """Every test result; a column has drifted when it drifted over the whole table or
    within any segment (a shift in one customer segment is drift, even when the whole
    table's distribution hardly moves)."""

    columns: list[ColumnDrift]  # the whole table's, then each segment's
    settings: DriftSettings

    @property
    def overall(self) -> list[ColumnDrift]:
        return [result for result in self.columns if result.segment is None]

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

    def to_dict(self) -> dict:
        return {
            "dataset_drifted": self.dataset_drifted,
            "drifted_share": self.drifted_share,
            "drift_share": self.settings.drift_share,
            "drifted_columns": {name: self.drifted_in(name) for name in self.drifted_columns},
            "columns": [asdict(result) for result in self.columns],
        }


def compare_tables(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: DriftSettings | None = None,
    segment: str | None = None,
    exclude: tuple[str, ...] = (),
) -> DriftReport:
    """Every shared column of ``current`` against ``reference`` (``exclude`` left out, and
    ``segment`` too, which is what rows are grouped by)."""
    settings = settings or DriftSettings()
    columns = _shared_columns(reference, current, exclude + ((segment,) if segment else ()))
    pairs = [(reference[c], current[c], c, None) for c in columns]
    if segment:
        pairs += _segment_pairs(reference, current, columns, segment)
    # NumPy's sorts and histograms release the GIL: columns are tested side by side.
    with ThreadPoolExecutor(max_workers=min(len(pairs), os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda pair: _column_drift(*pair, settings), pairs))
    return DriftReport(results, settings)


def _shared_columns(
    reference: pd.DataFrame, current: pd.DataFrame, left_out: tuple[str, ...]
) -> list[str]:
    for name, table in (("reference", reference), ("current", current)):
        duplicated = sorted(set(table.columns[table.columns.duplicated()]))
        if duplicated:
            raise ConveyorError(f"{name} table: duplicated column name(s) {duplicated}")
    missing = sorted(set(reference.columns) ^ set(current.columns))
    if missing:
        only_reference = sorted(set(reference.columns) - set(current.columns))
        only_current = sorted(set(current.columns) - set(reference.columns))
        raise ConveyorError(
            "reference and current tables have different columns: "
            f"only in reference {only_reference}, only in current {only_current}"
        )
    for name in left_out:
        if name not in reference.columns:
            raise ConveyorError(f"segment column {name!r} is not in the tables")
    columns = [name for name in reference.columns if name not in left_out]
    if not columns:
        raise ConveyorError("the tables have no columns to compare")
    return columns


def _segment_pairs(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], segment: str
) -> list[tuple[pd.Series, pd.Series, str, str]]:
    """(reference values, current values, column, segment value) for each segment value
    both tables have (one the reference never saw has nothing to be compared with)."""
    reference_groups = dict(tuple(reference.groupby(segment, sort=True, observed=True)))
    pairs = []
    for value, current_rows in current.groupby(segment, sort=True, observed=True):
        reference_rows = reference_groups.get(value)
        if reference_rows is not None:
            pairs += [(reference_rows[c], current_rows[c], c, str(value)) for c in columns]
    return pairs


def _column_drift(
    reference: pd.Series,
    current: pd.Series,
    column: str,
    segment: str | None,
    settings: DriftSettings,
) -> ColumnDrift:
    reference, current = reference.dropna(), current.dropna()
    if reference.empty or current.empty:
        raise ConveyorError(
            f"column {column!r}{f' in segment {segment!r}' if segment else ''}: no values "
            f"to compare in the {'reference' if reference.empty else 'current'} table"
        )
    numeric = drift_kind(reference) == "numeric"
    if numeric and not pd.api.types.is_numeric_dtype(current):
        raise ConveyorError(
            f"column {column!r}: numeric in the reference, {current.dtype} in the current table"
        )
    if numeric:
        reference_values, current_values = reference.to_numpy(float), current.to_numpy(float)
        if not (np.isfinite(reference_values).all() and np.isfinite(current_values).all()):
            raise ConveyorError(
                f"column {column!r}: holds infinities in the "
                f"{'reference' if not np.isfinite(reference_values).all() else 'current'} "
                "table; drift cannot be measured on them"
            )
        scores = _numeric_scores(reference_values, current_values)
        test = settings.numeric_test
    else:
        scores = _categorical_scores(reference, current)
        test = settings.categorical_test
    return ColumnDrift(
        column=column,
        kind="numeric" if numeric else "categorical",
        scores=scores,
        deciding_test=test,
        drifted=settings.drifted(test, scores[test]),
        segment=segment,
        reference_rows=len(reference),
        current_rows=len(current),
    )


def drift_kind(values: pd.Series) -> Literal["numeric", "categorical"]:
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
    samples of up to 10,000 values; else, as scipy would, the Kolmogorov distribution at the
    samples' effective size, whose Smirnov limit is used where the p-value is far too small
    for any threshold (the exact tail is slow to compute and no more useful there)."""
    if max(len(reference), len(current)) <= _EXACT_KS:
        with warnings.catch_warnings():  # scipy says when it falls back to the asymptotic one
            warnings.simplefilter("ignore", RuntimeWarning)
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
    reference_counts = reference.astype(str).value_counts()
    current_counts = current.astype(str).value_counts()
    keys = reference_counts.index.union(current_counts.index)
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


def detect_drift(
    reference: str,
    current: str,
    settings: DriftSettings,
    segment: str | None,
    exclude: tuple[str, ...],
    outputs: DriftOutputs,
) -> DriftReport:
    """Reads both tables (CSV or Parquet, any URI ``load_table`` reads), compares them, and
    writes the outputs that are set; nothing is written when a table cannot be compared."""
    import json

    from components.core.data import Source, load_table
    from components.core.files import write_text_atomically

    reference_table = load_table(Source(reference))
    current_table = load_table(Source(current))
    report = compare_tables(reference_table, current_table, settings, segment, exclude)
    note = ""
    if outputs.html:
        columns = [c for c in reference_table.columns if c not in exclude and c != segment]
        note = render_report(
            reference_table[columns], current_table[columns], settings, outputs.html,
            outputs.sample_rows,
        )  # fmt: skip
    if outputs.markdown:
        write_text_atomically(outputs.markdown, markdown(report, note))
    if outputs.summary:
        write_text_atomically(outputs.summary, json.dumps(report.to_dict(), indent=2))
    return report


@dataclass(frozen=True)
class DriftOutputs:
    """Where ``detect_drift`` writes: Evidently's HTML report (rendered on at most
    ``sample_rows`` rows per table), the Markdown report, the JSON summary."""

    html: Path | None = None
    markdown: Path | None = None
    summary: Path | None = None
    sample_rows: int = 50_000


def describe(report: DriftReport) -> str:
    """The verdict in one sentence."""
    drifted = report.drifted_columns
    verdict = "Drift" if report.dataset_drifted else "No dataset drift"
    listed = ", ".join(
        name if where == ["all"] else f"{name} (in {', '.join(where)})"
        for name, where in ((name, report.drifted_in(name)) for name in drifted)
    )
    return (
        f"{verdict}: {len(drifted)} of {len(report.overall)} columns drifted "
        f"({report.drifted_share:.0%}; the dataset drifts at "
        f"{report.settings.drift_share:.0%}){': ' + listed if listed else ''}"
    )


def table_lines(report: DriftReport) -> list[str]:
    """One aligned line per column (and per segment's drifted column): kind, every score,
    the deciding test and the verdict."""
    header = f"{'column':<24} {'segment':<12} {'kind':<11} " + " ".join(
        f"{test:>13}" for test in TESTS
    )
    lines = [header + "  decided by     verdict"]
    for result in report.columns:
        if result.segment is not None and not result.drifted:
            continue
        scores = " ".join(
            f"{result.scores[test]:>13.4g}" if test in result.scores else f"{'-':>13}"
            for test in TESTS
        )
        lines.append(
            f"{result.column:<24} {result.segment or '(all)':<12} {result.kind:<11} {scores}  "
            f"{result.deciding_test:<14} {'DRIFT' if result.drifted else 'ok'}"
        )
    return lines


def markdown(report: DriftReport, note: str = "") -> str:
    """A report a person reads in the KFP UI: the verdict, then a row per column."""
    settings = report.settings
    rows = [
        "| column | segment | kind | " + " | ".join(TESTS) + " | decided by | verdict |",
        "|---|---|---|" + "---:|" * len(TESTS) + "---|---|",
    ]
    for result in report.columns:
        scores = " | ".join(
            f"{result.scores[test]:.4g}" if test in result.scores else "" for test in TESTS
        )
        verdict = "**drift**" if result.drifted else "ok"
        rows.append(
            f"| {result.column} | {result.segment or 'all'} | {result.kind} | {scores} | "
            f"{result.deciding_test} | {verdict} |"
        )
    limits = ", ".join(
        f"{test} {'<' if test in _P_VALUES else '≥'} {settings.threshold(test)}" for test in TESTS
    )
    parts = [
        "# Data drift",
        f"**{describe(report)}.**",
        f"Drift means {limits}; numeric columns are decided by {settings.numeric_test}, "
        f"categorical ones by {settings.categorical_test}.",
        "\n".join(rows),
    ]
    return "\n\n".join(parts + ([note] if note else [])) + "\n"


def render_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: DriftSettings,
    path: Path,
    sample_rows: int = 50_000,
    seed: int = 0,
) -> str:
    """Evidently's drift report as HTML at ``path``, with this module's deciding tests and
    thresholds; above ``sample_rows`` rows a table is sampled (seeded). Returns a note on
    what was rendered."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    note = ""
    if max(len(reference), len(current)) > sample_rows:
        reference = reference.sample(min(len(reference), sample_rows), random_state=seed)
        current = current.sample(min(len(current), sample_rows), random_state=seed)
        note = (
            f"Evidently's report is rendered on a seeded sample of {sample_rows:,} rows per "
            "table; the verdicts and statistics above are computed on every row."
        )
    preset = DataDriftPreset(
        num_method=settings.numeric_test,
        cat_method=settings.categorical_test,
        num_threshold=settings.threshold(settings.numeric_test),
        cat_threshold=settings.threshold(settings.categorical_test),
        drift_share=settings.drift_share,
    )
    kinds = {name: drift_kind(reference[name].dropna()) for name in reference.columns}
    definition = DataDefinition(
        numerical_columns=[name for name, kind in kinds.items() if kind == "numeric"],
        categorical_columns=[name for name, kind in kinds.items() if kind == "categorical"],
    )
    datasets = [
        Dataset.from_pandas(table, data_definition=definition) for table in (current, reference)
    ]
    snapshot = Report([preset]).run(*datasets)
    write_atomically(path, lambda partial: snapshot.save_html(str(partial)))
    return note
