"""Validate's core: schema inference and the rules that check a table against it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.core.errors import ConveyorError
from components.core.schema import Schema, infer_schema
from components.core.validation import check_table, validate_splits


@pytest.fixture
def schema(species: pd.DataFrame) -> Schema:
    return infer_schema(species, "species")


def test_inferred_schema_describes_each_column(species: pd.DataFrame, schema: Schema) -> None:
    columns = {column.name: column for column in schema.columns}
    assert columns["size"].kind == "numeric"
    assert columns["size"].min == species["size"].min()
    assert columns["size"].allowed_min < columns["size"].min
    assert columns["color"].kind == "categorical"
    assert columns["color"].categories == ["blue", "green", "red"]
    assert columns["weight"].null_rate == pytest.approx(10 / len(species))
    assert [c.name for c in schema.features()] == ["size", "weight", "color"]
    assert Schema.from_json(schema.to_json()) == schema


def test_a_table_like_the_training_split_passes(species: pd.DataFrame, schema: Schema) -> None:
    assert check_table(species.sample(frac=0.5, random_state=1), schema) == []


def test_unseen_category_is_an_error_naming_column_and_values(
    species: pd.DataFrame, schema: Schema
) -> None:
    table = species.copy()
    table.loc[[3, 8], "color"] = "purple"
    (violation,) = check_table(table, schema)
    assert (violation.column, violation.rule, violation.severity) == (
        "color",
        "allowed_categories",
        "error",
    )
    assert "'purple'" in violation.detail and "in 2 rows" in violation.detail


def test_strings_in_a_numeric_column_break_the_type_rule(
    species: pd.DataFrame, schema: Schema
) -> None:
    table = species.copy().astype({"size": object})
    table.loc[4, "size"] = "ten"
    violations = check_table(table, schema)
    assert [(v.column, v.rule) for v in violations] == [("size", "type")]
    assert "'ten'" in violations[0].detail


def test_missing_column_and_null_spike(species: pd.DataFrame, schema: Schema) -> None:
    table = species.drop(columns=["color"])
    table.loc[: len(table) // 2, "weight"] = np.nan
    found = {(v.column, v.rule) for v in check_table(table, schema)}
    assert found == {("color", "presence"), ("weight", "null_rate")}


def test_out_of_range_values_are_a_warning(species: pd.DataFrame, schema: Schema) -> None:
    table = species.copy()
    table.loc[0, "size"] = 1e6
    (violation,) = check_table(table, schema)
    assert (violation.rule, violation.severity) == ("range", "warning")
    assert "1000000.0" in violation.detail


def _splits(tmp_path: Path, train: pd.DataFrame, test: pd.DataFrame) -> tuple[Path, Path]:
    train.to_parquet(tmp_path / "train")
    test.to_parquet(tmp_path / "test")
    return tmp_path / "train", tmp_path / "test"


def test_validate_writes_schema_and_report_and_fails_one_line_per_rule(
    tmp_path: Path, species: pd.DataFrame
) -> None:
    train, test = species.iloc[:300].copy(), species.iloc[300:].copy()
    train["empty"] = np.nan
    test["empty"] = np.nan
    test.loc[test.index[:2], "color"] = "purple"
    paths = _splits(tmp_path, train, test)
    with pytest.raises(ConveyorError) as raised:
        validate_splits(*paths, "species", tmp_path / "schema.json", tmp_path / "report.md")
    lines = str(raised.value).splitlines()
    assert lines[0] == "2 rule(s) violated:"
    assert lines[1] == (
        "training split: column 'empty' [not_all_null]: every value is empty; expected some values"
    )
    assert lines[2].startswith("evaluation split: column 'color' [allowed_categories]")
    report = (tmp_path / "report.md").read_text()
    assert "**Failed**: 2 rule(s) violated." in report and "'purple'" in report
    assert Schema.from_json((tmp_path / "schema.json").read_text()).target == "species"


def test_validate_passes_and_reports_warnings(tmp_path: Path, species: pd.DataFrame) -> None:
    train, test = species.iloc[:300].copy(), species.iloc[300:].copy()
    test.loc[test.index[0], "weight"] = 1e4
    paths = _splits(tmp_path, train, test)
    result = validate_splits(*paths, "species", tmp_path / "schema.json", tmp_path / "report.md")
    assert result.errors == [] and [w.rule for w in result.warnings] == ["range"]
    report = (tmp_path / "report.md").read_text()
    assert "**Passed**" in report and "## Warnings" in report


def test_infinity_is_an_error_in_either_split(tmp_path: Path, species: pd.DataFrame) -> None:
    train, test = species.iloc[:300].copy(), species.iloc[300:].copy()
    train.loc[train.index[0], "size"] = np.inf
    test.loc[test.index[0], "weight"] = -np.inf
    with pytest.raises(ConveyorError) as raised:
        validate_splits(*_splits(tmp_path, train, test), "species", tmp_path / "s", tmp_path / "r")
    assert str(raised.value).splitlines()[1:] == [
        "training split: column 'size' [finite]: 1 infinite value(s), such as inf; "
        "expected finite numbers (e.g. row 0)",
        "evaluation split: column 'weight' [finite]: 1 infinite value(s), such as -inf; "
        "expected finite numbers (e.g. row 0)",
    ]
    assert json.loads((tmp_path / "s").read_text())  # no Infinity in the schema's JSON


def test_numbers_with_stray_text_are_named(tmp_path: Path, species: pd.DataFrame) -> None:
    train = species.astype({"size": str})  # as read from a CSV holding "?"
    train.loc[[1, 5], "size"] = "?"
    paths = _splits(tmp_path, train.iloc[:300], train.iloc[300:])
    with pytest.raises(
        ConveyorError,
        match=r"training split: column 'size' \[type\]: numbers mixed with text in 2 row\(s\), such as '\?'",
    ):
        validate_splits(*paths, "species", tmp_path / "s", tmp_path / "r")
