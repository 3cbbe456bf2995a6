"""Requests to tables and predictions to responses, for the serving runtime (no KServe here).

The model directory's card lists the training columns, their kind and order. A
request is turned into a table with exactly those columns, so serving applies the
same preprocessing the model was trained with; a request missing columns or
sending text where numbers are expected is refused with every such column named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from components.core.errors import ConveyorError, plain
from components.core.training import Feature, TrainedModel

__all__ = [
    "Predictions",
    "example_instance",
    "predict_table",
    "table_from_columns",
    "table_from_instances",
]


@dataclass(frozen=True)
class Predictions:
    """One label per row and, for each row, the probability of each class (card order)."""

    labels: list[Any]
    probabilities: np.ndarray
    classes: list[Any]


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


def table_from_columns(columns: Mapping[str, Any], features: Sequence[Feature]) -> pd.DataFrame:
    """A table from one array (or list) of values per column name."""
    missing = [feature.name for feature in features if feature.name not in columns]
    if missing:
        raise ConveyorError(f"missing columns: {', '.join(missing)}")
    lengths = {len(columns[feature.name]) for feature in features}
    if len(lengths) != 1:
        raise ConveyorError(f"columns have different numbers of rows: {sorted(lengths)}")
    table = pd.DataFrame({feature.name: columns[feature.name] for feature in features})
    return _checked(table, features)


def predict_table(model: TrainedModel, table: pd.DataFrame) -> Predictions:
    """Labels and class probabilities for every row."""
    probabilities = model.pipeline.predict_proba(table)
    classes = model.card.classes
    labels = np.asarray(model.pipeline.classes_)[probabilities.argmax(axis=1)]
    return Predictions([plain(label) for label in labels], probabilities, list(classes))


def example_instance(features: Sequence[Feature]) -> dict[str, Any]:
    """A V1 instance any model with these features accepts (unseen categories are ignored)."""
    return {f.name: 0.0 if f.kind == "numeric" else "example" for f in features}


def _rows_as_columns(rows: list[list[Any]], names: list[str]) -> dict[str, list[Any]]:
    wrong = [index for index, row in enumerate(rows) if len(row) != len(names)]
    if wrong:
        raise ConveyorError(
            f"each instance must hold {len(names)} values in training column order "
            f"({', '.join(names)}); row {wrong[0]} holds {len(rows[wrong[0]])}"
        )
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


def _checked(table: pd.DataFrame, features: Sequence[Feature]) -> pd.DataFrame:
    """The table with numeric columns as numbers; raises naming every mistyped column."""
    dtypes = table.dtypes  # once: only object columns (text, or mixed) need a closer look
    mistyped = []
    for feature in features:
        is_object = dtypes[feature.name].kind == "O"
        if feature.kind == "numeric" and is_object:
            column = table[feature.name]
            converted = pd.to_numeric(column.where(~column.map(_is_text)), errors="coerce")
            if (converted.isna() & column.notna()).any():
                mistyped.append(f"{feature.name} (expected numbers)")
                continue
            table[feature.name] = converted
        elif feature.kind != "numeric" and not _all_text_or_missing(table[feature.name]):
            mistyped.append(f"{feature.name} (expected text)")
    if mistyped:
        raise ConveyorError(f"mistyped columns: {', '.join(mistyped)}")
    return table


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _all_text_or_missing(column: pd.Series) -> bool:
    if column.dtype != object:
        return bool(column.isna().all())
    return bool(column.map(lambda value: _is_text(value) or pd.isna(value)).all())
