"""Drift from mergeable summaries of a table's partitions: ``compare_tables``' verdicts,
with each partition read in a process of its own, in batches, twice.

Two passes, because drift's bins depend on the whole current table: Sturges' edges span
both tables' values, and their number grows with both tables' rows.

1. ``profile`` (per partition, then ``merge_profiles``): per tested column, overall and per
   segment value, the rows, the values, their minimum and maximum, and each value's count
   while there are at most ``DISTINCT_CAP`` distinct ones (categories: the ``DISTINCT_CAP``
   most frequent, the rest counted together).
2. ``plan_bins`` turns the merged profiles of both tables into each numeric column's bins,
   the very edges or values ``compare_tables`` bins on, and a grid for Kolmogorov–Smirnov;
   ``count`` (per partition, then ``merge_counts``) counts the values in them.
3. ``judge`` computes every statistic from the counts.

**What is exact.** Rows, nulls, categories and bins are counts, which add exactly; so PSI,
Jensen–Shannon, chi-squared and the noise test equal ``compare_tables``' to the last bits
of floating point, and so do the verdicts they decide. The KS p-value is exact when the
grid holds every distinct value of both tables (each has at most ``DISTINCT_CAP``; samples
of up to 10,000 values always do). Otherwise it is computed from ``D_grid``, the largest gap
between the two distribution functions at the grid's points; the exact gap ``D`` lies in
``[D_grid, D_grid + e]``, ``e`` being the largest share of either table's values strictly
between two neighbouring points (the grid holds ``KS_POINTS`` quantiles of the reference
and as many points evenly over the current values' range, so ``e`` is about 1/512 for the
reference). The report's score is the p-value at ``D_grid``; where KS decides a column and
its verdict differs at the two ends, the column is listed in ``approximations``. A category
column with more than ``DISTINCT_CAP`` categories in a table gets one bin for the rarest
ones, and is listed too.

Memory: a batch (``partitions.BATCH_ROWS`` rows) at a time, the profile (at most
``DISTINCT_CAP`` values per column and segment) and the counts (a few hundred bins and
``2 * KS_POINTS`` grid points per numeric column and segment).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from conveyor.components.core.data.partitions import BATCH_ROWS, columns_of, read_batches
from conveyor.components.core.data.roles import Role
from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.monitoring.drift import (
    EXACT_KS,
    FEW_VALUES,
    TESTED_ROLES,
    DriftReport,
    DriftSettings,
    Kind,
    Rows,
    _kinds,
    _shared_columns,
    binned_scores,
    categorical_scores,
    category_counts,
    judged,
    ks_p_value_of,
    reference_roles,
    sturges_edges,
    untested_note,
)
from conveyor.components.core.serving.payload_log import input_columns

__all__ = [
    "DISTINCT_CAP",
    "KS_POINTS",
    "Tested",
    "compare_partitions",
    "count",
    "judge",
    "load_counts",
    "load_plan",
    "load_profile",
    "merge_counts",
    "merge_profiles",
    "plan_bins",
    "profile",
    "save_counts",
    "save_plan",
    "save_profile",
    "tested_columns",
]

DISTINCT_CAP = 10_000
KS_POINTS = 512
_FORMAT = "conveyor-drift"
_OTHER = "(rarer categories)"  # the bin of categories past DISTINCT_CAP


@dataclass(frozen=True)
class Tested:
    """What a partitioned drift check tests, decided on the reference.

    Attributes:
        kinds: Each tested column's kind, in the reference's column order.
        segment: The column rows are also grouped by; None for none.
        exclude: Columns not tested that a partition may lack: excluded ones and those
            whose role is not tested.
        skipped: Why each untested column is not tested, for the report.
        reference_columns: Every column of the reference.
    """

    kinds: dict[str, Kind]
    segment: str | None
    exclude: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)
    reference_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.kinds:
            raise ConveyorError("the tables have no columns to compare")

    @property
    def read(self) -> list[str]:
        """The columns a partition is read for."""
        return [*self.kinds, *([self.segment] if self.segment else [])]

    def check_partition(self, names: Sequence[str], where: str) -> None:
        """Fails in one line, naming ``where``, when its columns are not the reference's."""
        if self.segment and self.segment not in names:
            raise ConveyorError(f"{where}: segment column {self.segment!r} is not in it")
        present = set(self.reference_columns) | set(names)
        try:
            _shared_columns(
                pd.DataFrame(columns=self.reference_columns),
                pd.DataFrame(columns=list(names)),
                self.segment,
                tuple(name for name in self.exclude if name in present),
            )
        except ConveyorError as error:
            raise ConveyorError(f"{where}: {error}") from None

    def check_file(self, uri: str) -> None:
        """``check_partition`` of a CSV or Parquet file's inputs (a payload log's
        ``conveyor.*`` columns are not inputs)."""
        self.check_partition(input_columns(pd.DataFrame(columns=columns_of(uri))), uri)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exclude": list(self.exclude)}

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> Tested:
        return cls(**{**content, "exclude": tuple(content["exclude"])})


def tested_columns(
    reference: pd.DataFrame,
    segment: str | None = None,
    exclude: tuple[str, ...] = (),
    roles: dict[str, Role] | None = None,
) -> Tested:
    """The columns ``compare_tables`` would test against ``reference``, and their kinds."""
    if roles is None:
        roles = reference_roles(reference, exclude)
    untested = {name: role for name, role in roles.items() if role not in TESTED_ROLES}
    left_out = (*exclude, *untested)
    present = tuple(name for name in left_out if name in reference.columns)
    columns = _shared_columns(reference, reference, segment, present)
    skipped = [untested_note(name, role) for name, role in untested.items() if name != segment]
    return Tested(_kinds(reference, columns), segment, left_out, skipped, list(reference.columns))


# Pass 1: profiles. A profile is JSON: {"rows", "segment_missing", "overall": {"rows",
# "columns"}, "segments": [{"value", "rows", "columns"}]}, a column's statistics being
# {"present", "lo", "hi", "values": [[value, count], ...] or null, "other"}.


def profile(
    frames: Iterable[pd.DataFrame],
    tested: Tested,
    where: str,
    start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One table's profile (a partition's batches, in order), added to ``start`` (the
    profile of the batches before); ``where`` names the table in errors."""
    merged = start or _empty_profile()
    for frame in frames:
        merged = merge_profiles([merged, _profile_frame(frame, tested, where, merged)])
    return merged


def _empty_profile() -> dict[str, Any]:
    return {"rows": 0, "segment_missing": 0, "overall": {"rows": 0, "columns": {}},
            "segments": []}  # fmt: skip


def _profile_frame(
    frame: pd.DataFrame, tested: Tested, where: str, so_far: dict[str, Any]
) -> dict[str, Any]:
    segment = tested.segment
    result = _empty_profile()
    result["rows"] = len(frame)
    result["overall"] = _group_profile(frame, tested, where, so_far["overall"])
    if segment:
        result["segment_missing"] = int(frame[segment].isna().sum())
        known = {_plain(item["value"]): item for item in so_far["segments"]}
        for value, rows in frame.groupby(segment, sort=False, observed=True):
            value = _plain(value)
            before = known.get(value, {"columns": {}})
            result["segments"].append(
                {"value": value, **_group_profile(rows, tested, where, before)}
            )
    return result


def _group_profile(
    frame: pd.DataFrame, tested: Tested, where: str, before: dict[str, Any]
) -> dict[str, Any]:
    columns = {}
    for name, kind in tested.kinds.items():
        values = frame[name].dropna()
        tracked = before["columns"].get(name, {}).get("values", []) is not None
        if kind == "numeric":
            columns[name] = _numeric_profile(values, name, where, tracked)
        else:
            columns[name] = _category_profile(values)
    return {"rows": len(frame), "columns": columns}


def _numeric_profile(values: pd.Series, name: str, where: str, tracked: bool) -> dict[str, Any]:
    if values.empty:
        return {"present": 0, "lo": None, "hi": None, "values": [], "other": 0}
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise ConveyorError(
            f"{where}: column {name!r}: numeric in the reference, {values.dtype} in the "
            "current table"
        )
    numbers = values.to_numpy(float)
    if not np.isfinite(numbers).all():
        raise ConveyorError(
            f"{where}: column {name!r}: holds infinities in the current table; drift cannot "
            "be measured on them"
        )
    distinct = None
    if tracked:
        keys, counts = np.unique(numbers, return_counts=True)
        if len(keys) <= DISTINCT_CAP:
            distinct = [[float(k), int(c)] for k, c in zip(keys, counts, strict=True)]
    return {"present": len(numbers), "lo": float(numbers.min()), "hi": float(numbers.max()),
            "values": distinct, "other": 0}  # fmt: skip


def _category_profile(values: pd.Series) -> dict[str, Any]:
    counts = values.value_counts()
    pairs = [[_plain(key), int(count)] for key, count in counts.items() if count]
    return {"present": len(values), "lo": None, "hi": None, "values": pairs, "other": 0}


def _plain(value: Any) -> Any:
    """A JSON scalar for a value: NumPy's as Python's; anything else not JSON as text."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def merge_profiles(profiles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The profile of the profiled tables one after another."""
    merged = _empty_profile()
    segments: dict[Any, dict[str, Any]] = {}
    for item in profiles:
        merged["rows"] += item["rows"]
        merged["segment_missing"] += item["segment_missing"]
        merged["overall"] = _merge_groups(merged["overall"], item["overall"])
        for group in item["segments"]:
            value = group["value"]
            known = segments.get(value)
            merged_group = _merge_groups(known or {"rows": 0, "columns": {}}, group)
            # One segment though 1 and 1.0 (a partition read with nulls): floats, as one
            # table of both would hold them.
            shown = value if known is None or isinstance(value, float) else known["value"]
            segments.pop(value, None)
            segments[shown] = {"value": shown, **merged_group}
    merged["segments"] = list(segments.values())
    return merged


def _merge_groups(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    columns = dict(a["columns"])
    for name, stats in b["columns"].items():
        columns[name] = _merge_stats(columns[name], stats) if name in columns else stats
    return {"rows": a["rows"] + b["rows"], "columns": columns}


def _merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    los = [x for x in (a["lo"], b["lo"]) if x is not None]
    his = [x for x in (a["hi"], b["hi"]) if x is not None]
    merged = {
        "present": a["present"] + b["present"],
        "lo": min(los) if los else None,
        "hi": max(his) if his else None,
        "values": None,
        "other": a["other"] + b["other"],
    }
    if a["values"] is None or b["values"] is None:
        return merged
    counts: dict[Any, int] = {}
    for key, number in (*a["values"], *b["values"]):
        counts[key] = counts.get(key, 0) + number
    pairs = sorted(counts.items(), key=lambda pair: -pair[1])
    if a["lo"] is not None or b["lo"] is not None:  # numeric: exact or nothing
        merged["values"] = [list(p) for p in pairs] if len(pairs) <= DISTINCT_CAP else None
        return merged
    merged["values"] = [list(p) for p in pairs[:DISTINCT_CAP]]
    merged["other"] += sum(number for _, number in pairs[DISTINCT_CAP:])
    return merged


# The plan: per numeric column and group, its bins ("keys": values; "edges": Sturges'
# edges) and its KS grid. Stored with NumPy; entries in the order judge reads them.


@dataclass(frozen=True)
class _Entry:
    column: str
    segment: Any  # the segment value; None for the whole table
    overall: bool
    by_value: bool  # bins are values (few distinct); else edges
    exact_ks: bool  # the grid holds every value of both tables
    exact_bins: bool  # as compare_tables bins: false for a few-valued reference column
    # whose current values were too many to keep
    bins: np.ndarray
    grid: np.ndarray


def plan_bins(
    reference: pd.DataFrame,
    reference_profile: dict[str, Any],
    current_profile: dict[str, Any],
    tested: Tested,
) -> list[_Entry]:
    """Each numeric column's bins and KS grid, overall and in each segment both tables
    have, from both tables' profiles (the reference's quantiles place the grid)."""
    entries = []
    for overall, value, ref_group, cur_group in _common_groups(reference_profile, current_profile):
        rows = reference if overall else reference[reference[tested.segment] == value]
        for name, kind in tested.kinds.items():
            ref, cur = ref_group["columns"].get(name), cur_group["columns"].get(name)
            if kind != "numeric" or not ref or not cur or not ref["present"] or not cur["present"]:
                continue
            entries.append(_entry(name, value, overall, ref, cur, rows[name]))
    return entries


def _common_groups(reference: dict[str, Any], current: dict[str, Any]):
    yield True, None, reference["overall"], current["overall"]
    known = {group["value"]: group for group in reference["segments"]}
    for group in current["segments"]:
        if group["value"] in known:
            yield False, group["value"], known[group["value"]], group


def _entry(
    name: str, value: Any, overall: bool, ref: dict, cur: dict, reference: pd.Series
) -> _Entry:
    ref_values, cur_values = ref["values"], cur["values"]
    every = None
    if ref_values is not None and cur_values is not None:
        every = np.union1d([k for k, _ in ref_values], [k for k, _ in cur_values])
    by_value = ref_values is not None and len(ref_values) <= FEW_VALUES and every is not None
    if by_value:
        bins = every
    else:
        lo, hi = min(ref["lo"], cur["lo"]), max(ref["hi"], cur["hi"])
        bins = sturges_edges(lo, hi, ref["present"] + cur["present"])
    if every is not None:
        grid = every
    else:
        numbers = np.sort(reference.dropna().to_numpy(float))
        quantiles = numbers[np.linspace(0, len(numbers) - 1, KS_POINTS).round().astype(int)]
        grid = np.unique(np.concatenate([quantiles, np.linspace(cur["lo"], cur["hi"], KS_POINTS)]))
    few = ref_values is not None and len(ref_values) <= FEW_VALUES
    return _Entry(
        name, value, overall, by_value, every is not None, by_value or not few, bins, grid
    )


# Pass 2: counts, per plan entry: the bins' counts, then the grid's: values at each point,
# and strictly between neighbouring points (below the first and above the last included).


def count(frames: Iterable[pd.DataFrame], tested: Tested, plan: list[_Entry], where: str):
    """Each plan entry's counts over one table (a partition's batches, in order)."""
    totals = [_zero_counts(entry) for entry in plan]
    for frame in frames:
        groups = {None: frame}
        if tested.segment:
            groups.update(
                {_plain(v): rows for v, rows in frame.groupby(tested.segment, observed=True)}
            )
        for index, entry in enumerate(plan):
            rows = groups.get(None if entry.overall else entry.segment)
            if rows is None:
                continue
            numbers = rows[entry.column].dropna().to_numpy(float)
            found = _counts(entry, numbers, where)
            totals[index] = [a + b for a, b in zip(totals[index], found, strict=True)]
    return totals


def _zero_counts(entry: _Entry) -> list[np.ndarray]:
    bins = len(entry.bins) if entry.by_value else len(entry.bins) - 1
    grid = len(entry.grid)
    return [np.zeros(bins, np.int64), np.zeros(grid, np.int64), np.zeros(grid + 1, np.int64)]


def _counts(entry: _Entry, numbers: np.ndarray, where: str) -> list[np.ndarray]:
    if entry.by_value:
        index = np.searchsorted(entry.bins, numbers)
        inside = index < len(entry.bins)
        matched = inside.all() and (entry.bins[index] == numbers).all()
        bins = np.bincount(index, minlength=len(entry.bins)) if matched else None
    else:
        bins = np.histogram(numbers, entry.bins)[0]
        matched = int(bins.sum()) == len(numbers)
    if not matched:
        raise ConveyorError(
            f"{where}: column {entry.column!r} holds values its profile did not: the table "
            "changed between the two passes"
        )
    left = np.searchsorted(entry.grid, numbers, side="left")
    right = np.searchsorted(entry.grid, numbers, side="right")
    on_point = right > left
    at = np.bincount(left[on_point], minlength=len(entry.grid))
    between = np.bincount(left[~on_point], minlength=len(entry.grid) + 1)
    return [bins.astype(np.int64), at, between]


def merge_counts(counts: Sequence[list[list[np.ndarray]]]) -> list[list[np.ndarray]]:
    """The counts of the counted tables together."""
    first, *rest = counts
    merged = [list(entry) for entry in first]
    for item in rest:
        if len(item) != len(merged):
            raise ConveyorError("drift counts of different plans cannot be merged")
        merged = [
            [a + b for a, b in zip(mine, theirs, strict=True)]
            for mine, theirs in zip(merged, item, strict=True)
        ]
    return merged


# Judging: compare_tables' pairs, in its order, from the profiles and counts.


@dataclass(frozen=True)
class _Side:
    profile: dict[str, Any]
    counts: dict[tuple[bool, Any, str], list[np.ndarray]]


def judge(
    tested: Tested,
    plan: list[_Entry],
    reference: tuple[dict[str, Any], list[list[np.ndarray]]],
    current: tuple[dict[str, Any], list[list[np.ndarray]]],
    settings: DriftSettings | None = None,
) -> DriftReport:
    """The report ``compare_tables`` gives on the two whole tables, from their profiles
    and counts (each a pair); KS verdicts within the grid's bound listed."""
    settings = settings or DriftSettings()
    keys = [(entry.overall, entry.segment, entry.column) for entry in plan]
    sides = [
        _Side(profile_, dict(zip(keys, counts_, strict=True)))
        for profile_, counts_ in (reference, current)
    ]
    plans = dict(zip(keys, plan, strict=True))
    pairs, skipped = _pairs(tested, *sides, settings)
    notes: list[str] = []
    results = [
        _judged_pair(pair, tested, plans, *sides, settings, len(pairs), notes) for pair in pairs
    ]
    return DriftReport(results, settings, [*tested.skipped, *skipped], tested.segment, notes)


def _pairs(tested: Tested, reference: _Side, current: _Side, settings: DriftSettings):
    """(overall, segment value, column) of every test, and what was left out, as
    ``compare_tables`` orders them."""
    pairs = []
    for name in tested.kinds:
        for side, label in ((reference, "reference"), (current, "current")):
            if not side.profile["overall"]["columns"].get(name, {}).get("present"):
                raise ConveyorError(f"column {name!r}: no values to compare in the {label} table")
        pairs.append((True, None, name))
    segment, skipped = tested.segment, []
    if not segment:
        return pairs, skipped
    for side, label in ((reference, "reference"), (current, "current")):
        if side.profile["segment_missing"]:
            skipped.append(
                f"{segment}: {side.profile['segment_missing']:,} {label} rows have no segment"
            )
    known = {group["value"]: group for group in reference.profile["segments"]}
    for group in sorted(current.profile["segments"], key=lambda g: _sortable(g["value"])):
        value, rows = group["value"], group["rows"]
        ref_group = known.get(value)
        if ref_group is None:
            skipped.append(f"{segment}={value}: new in the current table ({rows:,} rows)")
            continue
        smallest = min(ref_group["rows"], rows)
        if smallest < settings.min_segment_rows:
            skipped.append(
                f"{segment}={value}: {smallest:,} rows, below the {settings.min_segment_rows} "
                "a segment needs"
            )
            continue
        for name in tested.kinds:
            if ref_group["columns"][name]["present"] and group["columns"][name]["present"]:
                pairs.append((False, value, name))
            else:
                skipped.append(f"{name} in {segment}={value}: no values on one side")
    return pairs, skipped


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) and not isinstance(value, bool) else (
        1, str(value)
    )  # fmt: skip


def _judged_pair(pair, tested, plans, reference: _Side, current: _Side, settings, tests, notes):
    overall, value, name = pair
    kind = tested.kinds[name]
    ref_group, cur_group = (
        _group(reference.profile, overall, value),
        _group(current.profile, overall, value),
    )
    ref, cur = ref_group["columns"][name], cur_group["columns"][name]
    rows = Rows(ref_group["rows"], cur_group["rows"], ref["present"], cur["present"])
    segment = None if overall else str(value)
    if kind == "categorical":
        counts = _category_counts(ref, cur)
        if ref["other"] or cur["other"]:
            notes.append(
                f"{name} {_place(tested, segment)}: over {DISTINCT_CAP:,} categories; the rarer "
                "ones were counted in one bin"
            )
        scores = categorical_scores(*counts)
    else:
        key = (overall, value, name)
        entry, ref_counts, cur_counts = plans[key], reference.counts[key], current.counts[key]
        counts = (ref_counts[0], cur_counts[0])
        if not entry.exact_bins:
            notes.append(
                f"{name} {_place(tested, segment)}: binned on Sturges' edges, not by value: "
                f"the current table holds over {DISTINCT_CAP:,} distinct values"
            )
        p_value = _ks(
            entry, ref_counts, cur_counts, rows, settings, tests, notes, _place(tested, segment)
        )
        scores = binned_scores(*counts, p_value)
    return judged(name, kind, segment, scores, counts, rows, settings, tests)


def _group(profile_: dict[str, Any], overall: bool, value: Any) -> dict[str, Any]:
    if overall:
        return profile_["overall"]
    return next(group for group in profile_["segments"] if group["value"] == value)


def _category_counts(ref: dict[str, Any], cur: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    reference = {key: number for key, number in ref["values"]}
    current = {key: number for key, number in cur["values"]}
    if ref["other"] or cur["other"]:
        reference[_OTHER] = ref["other"]
        current[_OTHER] = cur["other"]
    return category_counts(reference, current)


def _place(tested: Tested, segment: str | None) -> str:
    return "overall" if segment is None else f"in {tested.segment}={segment}"


def _ks(entry, ref_counts, cur_counts, rows: Rows, settings, tests, notes, place) -> float:
    """The KS p-value from the grid's counts; a note when its verdict is not certain."""
    m, n = rows.reference_values, rows.current_values
    if entry.exact_ks and max(m, n) <= EXACT_KS:
        from scipy import stats

        samples = [np.repeat(entry.grid, c[1]) for c in (ref_counts, cur_counts)]
        return float(stats.ks_2samp(*samples).pvalue)
    ref_cdf = np.cumsum(ref_counts[2][:-1] + ref_counts[1]) / m
    cur_cdf = np.cumsum(cur_counts[2][:-1] + cur_counts[1]) / n
    distance = float(np.abs(ref_cdf - cur_cdf).max())
    p_value = ks_p_value_of(distance, m, n)
    if entry.exact_ks:
        return p_value
    bound = max(ref_counts[2].max() / m, cur_counts[2].max() / n)
    low = ks_p_value_of(min(1.0, distance + bound), m, n)
    if settings.deciding_test("numeric") == "ks" and _ks_verdict(
        low, settings, tests
    ) != _ks_verdict(p_value, settings, tests):
        notes.append(
            f"{entry.column} {place}: the KS distance lies in [{distance:.4g}, "
            f"{distance + bound:.4g}], p-value {low:.3g} to {p_value:.3g}, which straddles "
            "its verdict; reported at the lower distance"
        )
    return p_value


def _ks_verdict(p_value: float, settings: DriftSettings, tests: int) -> bool:
    level = settings.noise_level(tests)
    return settings.drifted("ks", p_value) and (level is None or p_value <= level)


# Files: profiles as JSON; plans and counts with NumPy, their layout in JSON beside.


def save_profile(profile_: dict[str, Any], path: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"format": f"{_FORMAT}-profile", **profile_}, handle)


def load_profile(path: Any) -> dict[str, Any]:
    content = _load_json(path, "profile")
    return {key: value for key, value in content.items() if key != "format"}


def save_plan(plan: list[_Entry], tested: Tested, path: Any) -> None:
    meta = {"format": f"{_FORMAT}-plan", "tested": tested.to_dict(),
            "entries": [{"column": e.column, "segment": e.segment, "overall": e.overall,
                         "by_value": e.by_value, "exact_ks": e.exact_ks, "exact_bins": e.exact_bins}
                        for e in plan]}  # fmt: skip
    arrays = {
        f"{part}{i}": getattr(e, part) for i, e in enumerate(plan) for part in ("bins", "grid")
    }
    _save_arrays(path, meta, arrays)


def load_plan(path: Any) -> tuple[list[_Entry], Tested]:
    meta, arrays = _load_arrays(path, "plan")
    entries = [
        _Entry(**item, bins=arrays[f"bins{i}"], grid=arrays[f"grid{i}"])
        for i, item in enumerate(meta["entries"])
    ]
    return entries, Tested.from_dict(meta["tested"])


def save_counts(counts: list[list[np.ndarray]], path: Any) -> None:
    arrays = {f"c{i}_{j}": part for i, entry in enumerate(counts) for j, part in enumerate(entry)}
    _save_arrays(path, {"format": f"{_FORMAT}-counts", "entries": len(counts)}, arrays)


def load_counts(path: Any) -> list[list[np.ndarray]]:
    meta, arrays = _load_arrays(path, "counts")
    return [[arrays[f"c{i}_{j}"] for j in range(3)] for i in range(meta["entries"])]


def _save_arrays(path: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _load_arrays(path: Any, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as error:
        raise ConveyorError(f"drift {kind} {path}: cannot be read ({first_line(error)})") from None
    if not isinstance(meta, dict) or meta.get("format") != f"{_FORMAT}-{kind}":
        raise ConveyorError(f"drift {kind} {path}: not a drift {kind} Conveyor wrote")
    return meta, arrays


def _load_json(path: Any, kind: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConveyorError(f"drift {kind} {path}: cannot be read ({first_line(error)})") from None
    if not isinstance(content, dict) or content.get("format") != f"{_FORMAT}-{kind}":
        raise ConveyorError(f"drift {kind} {path}: not a drift {kind} Conveyor wrote")
    return content


def compare_partitions(
    reference: pd.DataFrame,
    partitions: Sequence[str],
    settings: DriftSettings | None = None,
    segment: str | None = None,
    exclude: tuple[str, ...] = (),
    roles: dict[str, Role] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> DriftReport:
    """``compare_tables`` of ``reference`` against the files ``partitions`` one after another,
    both passes in this process: what the pipeline's fan-out does, one partition at a time."""
    tested = tested_columns(reference, segment, exclude, roles)
    for uri in partitions:
        tested.check_file(uri)
    ref_profile = profile([reference], tested, "reference table")
    cur_profile = merge_profiles(
        [profile(read_batches(uri, tested.read, batch_rows), tested, uri) for uri in partitions]
    )
    plan = plan_bins(reference, ref_profile, cur_profile, tested)
    ref_counts = count([reference], tested, plan, "reference table")
    cur_counts = merge_counts(
        [count(read_batches(uri, tested.read, batch_rows), tested, plan, uri) for uri in partitions]
    )
    return judge(tested, plan, (ref_profile, ref_counts), (cur_profile, cur_counts), settings)
