"""What each column of a table is to Conveyor, decided by one function that every step reads.

``column_role`` decides, from a column's Arrow type, its values and its name, and from what
the user declared (``DeclaredRoles``):

========== =========================================================== ===================
role        which columns                                               what becomes of it
========== =========================================================== ===================
identifier  declared in ``id_columns``; or text, every value distinct,  never a feature; unique
            without spaces, in at least ``ID_MIN_ROWS`` rows; or named  in training data; passed
            like an id (``customer_id``, ``orderId``, ``uuid``) with    to the payload log
            every value distinct (whole numbers or text)
excluded    declared in ``exclude_columns``                             never a feature
free_text   text, at least half its values distinct and on average     never a feature, with a
            at least ``FREE_TEXT_MIN_WORDS`` words, not declared        note; name it in
                                                                        ``text_columns`` to use it
text        declared in ``text_columns``                                a TF-IDF feature
datetime    a date or timestamp type, or text at least 90 % of whose      year, month, day of week
            values are ISO 8601 dates or times (``2024-03-01``,         and days since the
            ``2024-03-01T10:00``); the others (sentinels such as       earliest training date;
            ``0000-00-00``) are reported and read as missing            missing where none
numeric     numbers and booleans                                        a feature
categorical any other text                                              a one-hot feature
========== =========================================================== ===================

**Error rates.** Distinct text is taken for an identifier only from ``ID_MIN_ROWS`` (100)
rows, or under an id-like name. A category of ``K`` equally likely values drawn ``n`` times
is all distinct with probability about ``exp(-n(n-1)/2K)`` (the birthday problem): at
``n = 100`` that is 0.7 % for ``K = 1,000`` and under 10**-21 for ``K = 100``; a column with
``K = 10,000`` values that rarely repeat is taken for an identifier at 61 %, and so left
out rather than one-hot encoded into 10,000 columns that new rows seldom hit.
``tests/test_roles.py`` checks the 0.7 % by seeded simulation. A true identifier (every
value distinct) is always found from 100 rows; below, only under an id-like name, and a
whole-number identifier only under one (declare others in ``id_columns``).

The decision is made once, on the training split, when its schema is inferred; the schema
records it (``ColumnSchema.kind``) and validation, training, serving and drift read it from
there (drift, without a schema, decides on the same training split with this function). So a
column is never a category to one step and an identifier to another, whatever the size of
the table a later step reads.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from conveyor.components.core.data.columns import ColumnView, column_views
from conveyor.components.core.errors import ConveyorError

__all__ = [
    "FEATURE_ROLES",
    "FREE_TEXT_MIN_WORDS",
    "ID_MIN_ROWS",
    "ROLES",
    "UNDECLARED",
    "DeclaredRoles",
    "Role",
    "column_role",
    "column_roles",
    "date_parts",
    "date_shaped",
    "earliest_date",
    "parse_dates",
    "role_note",
    "roles_and_views",
]

Role = Literal["numeric", "categorical", "datetime", "text", "identifier", "excluded", "free_text"]
ROLES: tuple[str, ...] = get_args(Role)
# The roles a model learns from.
FEATURE_ROLES: tuple[str, ...] = ("numeric", "categorical", "datetime", "text")
# Fewer rows than this say too little about whether distinct text is an identifier or a
# category that happened not to repeat (an id-like name decides below it): the module's
# docstring gives the error rate.
ID_MIN_ROWS = 100
FREE_TEXT_MIN_WORDS = 2.0
FREE_TEXT_MIN_DISTINCT_SHARE = 0.5
# The features a date becomes, in order (``date_parts``' columns for each date column).
DATE_PARTS = ("year", "month", "day_of_week", "days_since_reference")

# customer_id, id, ID, order-uuid; customerId, CustomerID (case matters there: "paid" is none).
_ID_NAME = re.compile(r"(?:^|[_\-\s.])(?:id|uuid|guid)$|^(?:id|uuid|guid)(?:[_\-\s.]|$)", re.I)
_CAMEL_ID = re.compile(r"(?<=[a-z0-9])(?:Id|ID)$")
# A time of day followed by a UTC offset: "T10:00:00+05:00", " 10:00Z", "T10-03".
_OFFSET = r"[T ]\d{2}(?::?\d{2}){0,2}(?:[.,]\d+)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)\s*$"
# ISO 8601 dates and date-times, as pandas' ``format="ISO8601"`` parses them.
_ISO_DATE = (
    r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)
# A text column is dates when at least this share of its values are: exports hold
# sentinels ("0000-00-00", "unknown") that the date_format rule reports, as missing values.
DATE_MIN_SHARE = 0.9


@dataclass(frozen=True)
class DeclaredRoles:
    """The roles a user gives columns, over what ``column_role`` would decide.

    Attributes:
        id_columns: Columns that identify a row (a customer id): never features, passed to
            the payload log.
        exclude_columns: Columns never used (a column leaking the label, personal data).
        text_columns: Free-text columns to learn from (TF-IDF); others are left out.
    """

    id_columns: tuple[str, ...] = ()
    exclude_columns: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for setting in ("id_columns", "exclude_columns", "text_columns"):
            names = getattr(self, setting)
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise ConveyorError(f"{setting}: expected a list of column names, got {names!r}")
            for name in names:
                if name in seen:
                    raise ConveyorError(
                        f"{setting}: column {name!r} is also in {seen[name]}; give each "
                        "column one role"
                    )
                seen[name] = setting
            object.__setattr__(self, setting, tuple(names))

    def declared(self, name: str) -> Role | None:
        if name in self.id_columns:
            return "identifier"
        if name in self.exclude_columns:
            return "excluded"
        if name in self.text_columns:
            return "text"
        return None

    def check_present(self, names: list[str], target: str, where: str) -> None:
        """Declared columns must be in the table, and none may be the label."""
        for setting in ("id_columns", "exclude_columns", "text_columns"):
            for name in getattr(self, setting):
                if name == target:
                    raise ConveyorError(f"{setting}: {name!r} is the label column")
                if setting != "id_columns" and name not in names:
                    # An id column may be absent from training data (the predictor still
                    # passes it to the payload log).
                    raise ConveyorError(f"{setting}: {where} has no column {name!r}")


# Nothing declared: every column's role is decided from its values.
UNDECLARED = DeclaredRoles()


def column_roles(
    table: pd.DataFrame | pa.Table,
    target: str = "",
    declared: DeclaredRoles = UNDECLARED,
    where: str = "table",
) -> dict[str, Role]:
    """Every column's role but the label's, in the table's order."""
    return roles_and_views(table, target, declared, where)[0]


def roles_and_views(
    table: pd.DataFrame | pa.Table,
    target: str = "",
    declared: DeclaredRoles = UNDECLARED,
    where: str = "table",
    exclude: Collection[str] = (),
) -> tuple[dict[str, Role], dict[str, ColumnView]]:
    """``column_roles`` but for ``exclude``d columns, with the views the roles were decided
    on: every column's but the excluded and the plainly numeric ones (never converted)."""
    from conveyor.components.core.data.tables import as_arrow

    names = list(table.columns) if isinstance(table, pd.DataFrame) else table.column_names
    declared.check_present(names, target, where)
    plain = _plainly_numeric(table, declared) if isinstance(table, pd.DataFrame) else set()
    views = column_views(as_arrow(table, skip={*plain, *exclude}), where)
    roles = {name: "numeric" if name in plain else column_role(views[name], declared)
             for name in names if name not in exclude}  # fmt: skip
    return {name: role for name, role in roles.items() if name != target}, views


def _plainly_numeric(table: pd.DataFrame, declared: DeclaredRoles) -> set[str]:
    """Columns of a pandas number or boolean dtype, undeclared and not named like an id:
    numeric, as ``column_role`` would say, without the cost of converting them to Arrow
    (drift reads tables of millions of rows)."""
    return {
        name
        for name, dtype in table.dtypes.items()
        if isinstance(name, str)
        and pd.api.types.is_numeric_dtype(dtype)
        and declared.declared(name) is None
        and not _id_like_name(name)
    }


def column_role(view: ColumnView, declared: DeclaredRoles = UNDECLARED) -> Role:
    """The role of one column: the module's table says how it is decided."""
    given = declared.declared(view.name)
    if given == "text" and view.is_numeric:
        raise ConveyorError(
            f"text_columns: {view.name!r} holds {view.dtype} values, not text; only free "
            "text is learned from as words"
        )
    if given is not None:
        return given
    kind = view.array.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return "datetime"
    if view.is_numeric:
        return "identifier" if _numbered_ids(view) else "numeric"
    return _text_role(view)


def _numbered_ids(view: ColumnView) -> bool:
    """Whole numbers under an id-like name, every one distinct."""
    if not _id_like_name(view.name) or pa.types.is_boolean(view.array.type):
        return False
    values = view.numbers[view.valid]
    return values.size > 1 and bool(np.all(values == np.round(values))) and _all_distinct(view)


def _text_role(view: ColumnView) -> Role:
    labels = pa.array(view.labels[view.label_counts > 0].astype(str), pa.string())
    if len(labels) == 0:
        return "categorical"
    if _mostly_dates(labels, view.label_counts[view.label_counts > 0]):
        return "datetime"
    distinct = _all_distinct(view)
    spaced = pc.match_substring_regex(labels, r"\s")
    if distinct and _id_like_name(view.name):
        return "identifier"
    valid = int(view.valid.sum())
    if distinct and valid >= ID_MIN_ROWS and not pc.any(spaced).as_py():
        return "identifier"
    words = pc.count_substring_regex(labels, r"\S+").to_numpy(zero_copy_only=False)
    many = len(labels) >= FREE_TEXT_MIN_DISTINCT_SHARE * valid
    if many and float(np.mean(words)) >= FREE_TEXT_MIN_WORDS:
        return "free_text"
    return "categorical"


def _id_like_name(name: str) -> bool:
    return bool(_ID_NAME.search(name) or _CAMEL_ID.search(name))


def _all_distinct(view: ColumnView) -> bool:
    valid = int(view.valid.sum())
    if view.is_integer:  # exactly: 64-bit ids past 2**53 share a float
        return pc.count_distinct(view.array, mode="only_valid").as_py() == valid
    if view.is_numeric:
        return len(np.unique(view.numbers[view.valid])) == valid
    return bool(valid > 0 and np.all(view.label_counts <= 1))


def _mostly_dates(labels: pa.Array, counts: np.ndarray) -> bool:
    """At least ``DATE_MIN_SHARE`` of the rows hold an ISO 8601 date, and one parses."""
    shaped = date_shaped(labels)
    if counts[shaped].sum() < DATE_MIN_SHARE * counts.sum():
        return False
    return bool(parse_dates(labels.filter(pa.array(shaped)).to_numpy(zero_copy_only=False))
                .notna().any())  # fmt: skip


def date_shaped(values: pa.Array | np.ndarray | pd.Series) -> np.ndarray:
    """Whether each value is written as an ISO 8601 date or date-time (missing: False). A
    year outside 1678-2261 (a sentinel such as 9999-12-31) is one, though its parts are
    missing: pandas' timestamps do not reach it."""
    if not isinstance(values, pa.Array):
        texts = [value if isinstance(value, str) else None for value in np.ravel(values)]
        values = pa.array(texts, pa.string())
    shaped = pc.match_substring_regex(values, _ISO_DATE)
    return pc.fill_null(shaped, False).to_numpy(zero_copy_only=False)


def parse_dates(values: np.ndarray | pd.Series) -> pd.Series:
    """Dates and times as UTC timestamps (a time without an offset is read as UTC); NaT
    where a value is missing or not an ISO 8601 date. Times with an offset and times
    without are parsed apart: pandas reads a time without one in the offset of an earlier
    value with one, so one row (or, batched, one request) would move another's time."""
    series = pd.Series(np.asarray(values, dtype=object).ravel())
    if series.empty:
        return pd.Series([], dtype="datetime64[ns, UTC]")
    aware = series.astype(str).str.contains(_OFFSET, regex=True, case=False).to_numpy()
    if aware.all() or not aware.any():
        return _utc_dates(series)
    dates = _utc_dates(series.where(~aware))
    dates[aware] = _utc_dates(series[aware])
    return dates


def _utc_dates(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")


def date_parts(table: pd.DataFrame | np.ndarray, reference: str) -> np.ndarray:
    """Each date column as four numbers (``DATE_PARTS``): year, month, day of week (Monday
    0) and days since ``reference`` (an ISO date: the earliest training date); NaN where a
    value is missing or not a date. The pickled model calls this, in training and serving
    alike, so its name and arguments stay as they are."""
    frame = pd.DataFrame(table)
    origin = pd.Timestamp(reference, tz="UTC")
    parts = []
    for column in frame.columns:
        dates = parse_dates(frame[column].to_numpy(dtype=object))
        days = (dates - origin) / pd.Timedelta(days=1)
        parts += [dates.dt.year, dates.dt.month, dates.dt.dayofweek, days]
    return np.column_stack([np.asarray(part, dtype=float) for part in parts])


def earliest_date(values: pd.Series) -> str:
    """The earliest date among ``values`` as an ISO date; 1970-01-01 when none parses."""
    dates = parse_dates(values.to_numpy(dtype=object)).dropna()
    return dates.min().strftime("%Y-%m-%d") if len(dates) else "1970-01-01"


def role_note(name: str, role: Role) -> str:
    """Why a column the model does not learn from is left out, for reports; empty for a
    feature."""
    notes = {
        "identifier": "an identifier: never a feature; checked unique, passed to the payload log",
        "excluded": "excluded (exclude_columns)",
        "free_text": (
            "free text: left out; name it in text_columns to learn from it, or in "
            "exclude_columns to silence this note"
        ),
    }
    return f"{name}: {notes[role]}" if role in notes else ""
