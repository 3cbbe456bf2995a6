"""Requests to tables and predictions to responses, for the serving runtime (no KServe here).

The model directory's card lists the training columns, their kind and order. A
request is turned into a table with exactly those columns, so serving applies the
same preprocessing the model was trained with; a request missing columns, sending
text where numbers are expected, holding no rows or, in a V2 (Open Inference) input,
data its datatype or shape cannot hold is refused with every such column or input named.

The card's ``id_columns`` are never features: a request may send them (as V1 object keys or
V2 inputs), their values are read apart from the table (``ids_from_instances``,
``ids_from_tensors``) for the payload log, and a request without them is answered all the
same.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from conveyor.components.core.data.roles import date_shaped
from conveyor.components.core.errors import ConveyorError, plain
from conveyor.components.core.training.trainer import Feature, TrainedModel

__all__ = [
    "V2_DATATYPES",
    "Predictions",
    "Tensor",
    "array_from_tensor",
    "example_instance",
    "ids_from_instances",
    "ids_from_tensors",
    "predict_table",
    "table_from_columns",
    "table_from_instances",
    "table_from_tensors",
]

# The V2 protocol's tensor datatypes as NumPy types. BYTES holds text; JSON requests may put
# any JSON value in it (a 2-D input in training column order mixes numbers and text).
V2_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    **{f"UINT{bits}": np.dtype(f"uint{bits}") for bits in (8, 16, 32, 64)},
    **{f"INT{bits}": np.dtype(f"int{bits}") for bits in (8, 16, 32, 64)},
    **{f"FP{bits}": np.dtype(f"float{bits}") for bits in (16, 32, 64)},
    "BYTES": np.dtype(object),
}


@dataclass(frozen=True)
class Predictions:
    """One label per row and, for each row, the probability of each class (card order) and
    the index of the predicted one (at the card's decision threshold, if it has one).

    A regression model's (``values`` set): ``values`` holds each row's predicted number and
    ``labels`` the same as floats, to answer with; ``probabilities`` has no column,
    ``classes`` and ``picked`` are empty."""

    labels: list[Any]
    probabilities: np.ndarray
    classes: list[Any]
    picked: np.ndarray
    values: np.ndarray | None = None  # a regressor's numbers, one per row; None: classes

    @property
    def is_regression(self) -> bool:
        return self.values is not None

    def rows(self, start: int, stop: int) -> Predictions:
        """Rows ``start`` up to ``stop``: one request's share of a batch's predictions."""
        return Predictions(
            self.labels[start:stop],
            self.probabilities[start:stop],
            self.classes,
            self.picked[start:stop],  # a regressor's: empty, and still empty
            None if self.values is None else self.values[start:stop],
        )


class Tensor(Protocol):
    """A V2 input: what KServe's ``InferInput`` holds (datatype in upper case)."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...

    @property
    def data(self) -> Any: ...


# A value of each kind of feature a model accepts.
_EXAMPLE_VALUES: dict[str, Any] = {"numeric": 0.0, "datetime": "2024-01-01", "text": "example"}


def table_from_instances(instances: Any, features: Sequence[Feature]) -> pd.DataFrame:
    """A V1 ``instances`` list (objects keyed by column, or lists in training order) as a table."""
    if not isinstance(instances, list) or not instances:
        raise ConveyorError("'instances' must be a non-empty list of rows")
    names = [feature.name for feature in features]
    if all(isinstance(row, Mapping) for row in instances):
        missing = sorted({name for row in instances for name in names if name not in row})
        if missing:
            raise ConveyorError(f"missing columns: {', '.join(missing)}")
        return _checked(pd.DataFrame.from_records(instances, columns=names), features)
    if all(isinstance(row, list) for row in instances):
        return table_from_columns(_rows_as_columns(instances, names), features)
    raise ConveyorError("each instance must be an object keyed by column name or a list of values")


def table_from_tensors(
    tensors: Sequence[Tensor], features: Sequence[Feature], id_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """V2 inputs as a table: one input per column, named by column (inputs naming no column
    are ignored, as a V1 row's extra keys are), or one 2-D input in training column order
    (beside which inputs named for ``id_columns`` may come)."""
    names = [feature.name for feature in features]
    repeated = sorted(name for name, count in Counter(t.name for t in tensors).items() if count > 1)
    if repeated:
        raise ConveyorError(f"inputs given more than once: {', '.join(map(repr, repeated))}")
    if id_columns:
        tensors = [tensor for tensor in tensors if tensor.name not in id_columns]
    if len(tensors) == 1 and tensors[0].name not in names:
        matrix = array_from_tensor(tensors[0])
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise ConveyorError(
                f"input {tensors[0].name!r}: a single input must have shape [rows, {len(names)}], "
                f"columns in training order ({', '.join(names)}); got {list(matrix.shape)}"
            )
        return table_from_columns(
            {name: matrix[:, index] for index, name in enumerate(names)}, features
        )
    wanted = set(names)
    columns = {t.name: _column(t) for t in tensors if t.name in wanted}
    return table_from_columns(columns, features)


def ids_from_instances(instances: list[Any], id_columns: Sequence[str]) -> dict[str, list[Any]]:
    """Each id column's value in each V1 instance (None where one lacks it); empty for
    instances given as lists, which hold features only."""
    if not all(isinstance(row, Mapping) for row in instances):
        return {}
    ids = {name: [row.get(name) for row in instances] for name in id_columns}
    for name, values in ids.items():
        _check_ids(name, values)
    return ids


def ids_from_tensors(
    tensors: Sequence[Tensor], id_columns: Sequence[str], rows: int
) -> dict[str, list[Any]]:
    """Each id column's values from the V2 inputs named for it, one per row (NaN, from a
    null in a floating-point input, reads as None); columns without an input are left out."""
    ids = {}
    for tensor in tensors:
        if tensor.name not in id_columns:
            continue
        values = array_from_tensor(tensor)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values.reshape(-1)
        if values.ndim != 1 or len(values) != rows:
            raise ConveyorError(
                f"input {tensor.name!r} (an id column): expected one value per row, {rows}; "
                f"got shape {list(values.shape)}"
            )
        listed = values.tolist()
        if values.dtype.kind == "f":
            listed = [None if math.isnan(value) else value for value in listed]
        _check_ids(tensor.name, listed)
        ids[tensor.name] = listed
    return ids


def _check_ids(name: str, values: list[Any]) -> None:
    for index, value in enumerate(values):
        if value is not None and not isinstance(value, (str, int, float)):
            raise ConveyorError(
                f"id column {name!r} holds a JSON {_json_type(value)} in row {index}; "
                "expected text or a number"
            )


def table_from_columns(columns: Mapping[str, Any], features: Sequence[Feature]) -> pd.DataFrame:
    """A table from one array (or list) of values per column name."""
    missing = [feature.name for feature in features if feature.name not in columns]
    if missing:
        raise ConveyorError(f"missing columns: {', '.join(missing)}")
    lengths = {len(columns[feature.name]) for feature in features}
    if len(lengths) != 1:
        raise ConveyorError(f"columns have different numbers of rows: {sorted(lengths)}")
    if lengths == {0}:
        raise ConveyorError("the request holds no rows: send at least one")
    names = [feature.name for feature in features]
    arrays = [columns[name] for name in names]
    if all(isinstance(a, np.ndarray) and a.dtype == np.float64 and a.ndim == 1 for a in arrays):
        # One float block: a third of the time of a table built column by column.
        table = pd.DataFrame(np.column_stack(arrays), columns=names)
    else:
        table = pd.DataFrame(dict(zip(names, arrays, strict=True)))
    return _checked(table, features)


def array_from_tensor(tensor: Tensor) -> np.ndarray:
    """A V2 input's data as an array of its shape and datatype.

    Raises, naming the input: an unknown datatype; a shape that is not non-negative integers
    or does not hold the data; data the datatype cannot hold (text or null in a numeric
    input, a number out of its range, a fraction in an integer input, NaN or infinity).
    ``null`` in an FP16/FP32/FP64 input is a missing value (NaN), for the imputer to fill.
    """
    name, datatype = tensor.name, tensor.datatype
    dtype = V2_DATATYPES.get(datatype)
    if dtype is None:
        raise ConveyorError(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of "
            f"{', '.join(V2_DATATYPES)}"
        )
    shape = tensor.shape
    if not isinstance(shape, (list, tuple)) or not all(map(_is_size, shape)):
        raise ConveyorError(
            f"input {name!r}: shape {shape!r} must be a list of sizes (integers >= 0)"
        )
    values = _texts(name, tensor.data) if dtype.kind == "O" else _numbers(tensor, dtype)
    size = math.prod(shape)
    if values.size != size:
        raise ConveyorError(
            f"input {name!r}: shape {list(shape)} holds {size} values; its data has {values.size}"
        )
    return values.reshape(shape)


def predict_table(model: TrainedModel, table: pd.DataFrame) -> Predictions:
    """Labels and class probabilities for every row; a regression model's number for every
    row (``pipeline.predict``), without probabilities. A regressor's prediction that is not a
    finite number raises ConveyorError (the server answers 500: the model failed)."""
    if model.card.is_regression:
        values = np.asarray(model.pipeline.predict(table), dtype=np.float64).reshape(len(table))
        if not np.isfinite(values).all():  # JSON would say null, with a 200: the model's fault
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ConveyorError(
                f"the model predicted {values[row]} for row {row + 1}, not a finite number"
            )
        return Predictions(
            values.tolist(), np.empty((len(table), 0)), [], np.empty(0, np.intp), values
        )
    probabilities = model.pipeline.predict_proba(table)
    picked = model.card.predicted_indices(probabilities)
    labels = np.asarray(model.pipeline.classes_)[picked]
    return Predictions(
        [plain(label) for label in labels], probabilities, list(model.card.classes), picked
    )


def example_instance(features: Sequence[Feature]) -> dict[str, Any]:
    """A V1 instance any model with these features accepts (unseen categories are ignored)."""
    return {f.name: _EXAMPLE_VALUES.get(f.kind, "example") for f in features}


def _column(tensor: Tensor) -> np.ndarray:
    array = array_from_tensor(tensor)
    if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
        return array.reshape(-1)
    raise ConveyorError(
        f"input {tensor.name!r} is one column: its shape must be [rows] or [rows, 1], "
        f"not {list(array.shape)}"
    )


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _texts(name: str, data: Any) -> np.ndarray:
    values = np.array(data, dtype=object)
    try:
        return np.vectorize(_text, otypes=[object])(values) if values.size else values
    except UnicodeDecodeError:
        raise ConveyorError(f"input {name!r}: BYTES data is not UTF-8 text") from None


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _numbers(tensor: Tensor, dtype: np.dtype) -> np.ndarray:
    """Numeric data as an array of ``dtype``, or a ConveyorError saying what it holds instead."""
    name, datatype = tensor.name, tensor.datatype
    try:
        values = np.asarray(tensor.data)
    except (ValueError, TypeError):  # nested lists of unequal lengths
        raise ConveyorError(
            f"input {name!r}: data nests lists of unequal lengths; send a flat list in "
            "row-major order"
        ) from None
    if values.dtype.kind in "US":
        raise ConveyorError(f"input {name!r}: {datatype} data holds text; expected numbers")
    gaps = None
    if values.dtype.kind == "O":  # nulls, integers past 64 bits, or other JSON values
        values, gaps = _numbers_and_gaps(name, datatype, dtype, values)
    if dtype.kind == "b":
        if values.dtype.kind != "b":
            raise ConveyorError(f"input {name!r}: BOOL data must be true or false")
        return values
    if values.dtype.kind == "f":
        _check_finite(name, datatype, values, gaps)
    if dtype.kind in "iu":
        _check_integers(name, datatype, dtype, values)
    elif dtype != np.float64 and values.size:
        largest = float(np.fmax.reduce(np.abs(values), axis=None))  # NaN (a gap) is skipped
        if largest > float(np.finfo(dtype).max):
            raise ConveyorError(f"input {name!r}: {largest:g} is out of {datatype}'s range")
    return values.astype(dtype, copy=False)


def _numbers_and_gaps(
    name: str, datatype: str, dtype: np.dtype, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Numbers and nulls (an object array) as floats, NaN where null was, and where that was;
    raises on any other JSON value, and on null outside a floating-point input."""
    flat = values.ravel().tolist()
    odd = [value for value in flat if value is not None and not isinstance(value, (int, float))]
    if odd:
        held = "text" if isinstance(odd[0], str) else f"a JSON {_json_type(odd[0])}"
        raise ConveyorError(f"input {name!r}: {datatype} data holds {held}; expected numbers")
    gaps = np.fromiter((value is None for value in flat), dtype=bool, count=len(flat))
    if gaps.any() and dtype.kind != "f":
        raise ConveyorError(
            f"input {name!r}: {datatype} data holds null; only FP16, FP32 and FP64 inputs "
            "may mark a missing value with null"
        )
    try:
        numbers = np.array([math.nan if value is None else value for value in flat], dtype=float)
    except OverflowError:  # an integer past float64's range
        raise ConveyorError(f"input {name!r}: a number is out of {datatype}'s range") from None
    return numbers.reshape(values.shape), gaps


def _json_type(value: Any) -> str:
    return {list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _check_finite(name: str, datatype: str, values: np.ndarray, gaps: np.ndarray | None) -> None:
    if gaps is None and (
        math.isfinite(values.item()) if values.size == 1 else np.isfinite(values).all()
    ):  # one value (an online request's column) without numpy's reduction overhead
        return
    finite = np.isfinite(values).ravel()
    if gaps is not None:
        finite |= gaps
    if not finite.all():
        index = int(np.argmin(finite))
        raise ConveyorError(
            f"input {name!r}: {values.ravel()[index]} at position {index}; {datatype} data "
            "must be finite numbers (null marks a missing value)"
        )


def _check_integers(name: str, datatype: str, dtype: np.dtype, values: np.ndarray) -> None:
    if not values.size or values.dtype.kind == "b":
        return
    if values.dtype.kind == "f":
        fractional = (values != np.trunc(values)).ravel()
        if fractional.any():
            raise ConveyorError(
                f"input {name!r}: {values.ravel()[np.argmax(fractional)]} is not an integer; "
                f"{datatype} data must be integers"
            )
    info = np.iinfo(dtype)
    low, high = int(values.min()), int(values.max())  # exact, from floats too
    if low < info.min or high > info.max:
        outside = low if low < info.min else high
        raise ConveyorError(
            f"input {name!r}: {outside} is out of {datatype}'s range [{info.min}, {info.max}]"
        )


def _rows_as_columns(rows: list[list[Any]], names: list[str]) -> dict[str, list[Any]]:
    wrong = [index for index, row in enumerate(rows) if len(row) != len(names)]
    if wrong:
        raise ConveyorError(
            f"each instance must hold {len(names)} values in training column order "
            f"({', '.join(names)}); row {wrong[0]} holds {len(rows[wrong[0]])}"
        )
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


def _checked(table: pd.DataFrame, features: Sequence[Feature]) -> pd.DataFrame:
    """The table with numeric columns as numbers; raises naming every mistyped column.

    Only object columns (text, or mixed) need a closer look: a float column holds no NaN or
    infinity that is not a gap, since orjson (V1) refuses them and ``array_from_tensor``
    (V2) checks its inputs; in an object column, a NaN or infinity is a JSON literal.
    """
    mistyped, non_finite = [], []
    for feature, dtype in zip(features, table.dtypes, strict=True):  # columns in card order
        is_object = dtype.kind == "O"
        if feature.kind == "numeric" and is_object:
            column = table[feature.name]
            converted = pd.to_numeric(column.where(~column.map(_is_text)), errors="coerce")
            if (converted.isna() & column.notna()).any():
                mistyped.append(f"{feature.name} (expected numbers)")
                continue
            if column.map(_is_not_finite).any():
                non_finite.append(feature.name)
            table[feature.name] = converted
        elif feature.kind == "datetime" and not _all_dates_or_missing(table[feature.name]):
            # A date the model cannot read would be imputed silently: 12/02/2024 is refused.
            mistyped.append(f"{feature.name} (expected ISO 8601 dates such as 2024-03-01)")
        elif feature.kind != "numeric" and not _all_text_or_missing(table[feature.name]):
            mistyped.append(f"{feature.name} (expected text)")
    if mistyped:
        raise ConveyorError(f"mistyped columns: {', '.join(mistyped)}")
    if non_finite:
        raise ConveyorError(
            f"NaN or infinity in columns: {', '.join(non_finite)} (expected finite numbers; "
            "null marks a missing value)"
        )
    return table


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _all_dates_or_missing(column: pd.Series) -> bool:
    return bool((date_shaped(column) | column.isna().to_numpy()).all())


def _all_text_or_missing(column: pd.Series) -> bool:
    if column.dtype != object:
        return bool(column.isna().all())
    return bool(column.map(lambda value: _is_text(value) or pd.isna(value)).all())
