"""Validate's core: schema inference and the rules that check a table against it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conveyor.components.core.data.schema import (
    NULL_RATE_FALSE_ALARM,
    NULL_RATE_MARGIN,
    Schema,
    infer_schema,
    load_schema,
    null_rate_ceiling,
)
from conveyor.components.core.data.tables import split_table
from conveyor.components.core.data.validation import check_table, validate_splits
from conveyor.components.core.errors import ConveyorError


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


# Null-rate ceilings follow training (module docstring of conveyor.components.core.data.schema).


def _juice(rows: int, seed: int) -> pd.DataFrame:
    """Orange-juice purchases: a price never empty, a store, and whether the brand was bought."""
    rng = np.random.default_rng(seed)
    price = rng.choice([1.69, 1.79, 1.89, 1.99, 2.09], rows)
    return pd.DataFrame({
        "price": price,
        "store": rng.choice(["a", "b", "c"], rows),
        "week": rng.normal(100, 30, rows),
        "bought": np.where(price + rng.normal(0, 0.1, rows) < 1.9, "CH", "MM"),
    })  # fmt: skip


def _gappy(rows: int, share: float, seed: int, exact: bool = True) -> pd.DataFrame:
    """A ``discount`` column empty in ``share`` of ``rows`` (seeded rows; with ``exact``
    False, each row empty with chance ``share``), beside a full one."""
    rng = np.random.default_rng(seed)
    discount = rng.normal(0.2, 0.05, rows)
    empty = rng.random(rows) < share if not exact else rng.permutation(rows) < round(share * rows)
    discount[empty] = np.nan
    return pd.DataFrame({"discount": discount, "units": rng.uniform(1, 9, rows)})


def test_a_column_never_empty_in_training_fails_a_few_percent_empty(tmp_path: Path) -> None:
    # The incident: price lost in 3.7% of a held-out table of 1,070 rows in all; the flat
    # ceiling of 10 points let it through.
    train, test = _juice(855, seed=1), _juice(215, seed=2)
    lost = test.index[::27][:8]  # 8 of 215 rows: 3.72%
    test.loc[lost, "price"] = np.nan
    paths = _splits(tmp_path, train, test)
    with pytest.raises(ConveyorError) as raised:
        validate_splits(*paths, "bought", tmp_path / "schema.json", tmp_path / "report.md")
    assert str(raised.value).splitlines()[1:] == [
        "evaluation split: column 'price' [null_rate]: 3.72% empty; expected at most 1.86% for "
        "215 rows (derived from training: 0.0% of 855 rows) (e.g. rows 0, 27, 54)"
    ]
    price = load_schema(tmp_path / "schema.json").column("price")
    assert (price.rows, price.max_null_rate) == (855, 9 / 855)  # derived for 855 rows
    assert price.max_null_rate_for(215) == 4 / 215 and price.too_empty(4, 215) is False


def test_a_column_30_percent_empty_tolerates_its_own_noise_at_the_stated_rate() -> None:
    schema = infer_schema(_gappy(1000, 0.3, seed=3))
    discount = schema.column("discount")
    assert (discount.null_rate, discount.rows) == (0.3, 1000)
    rng = np.random.default_rng(4)
    for rows in (200, 20_000):
        # The rule reads only how many values are empty: 1,000 seeded tables' worth of them.
        alarms = sum(discount.too_empty(int(e), rows) for e in rng.binomial(rows, 0.3, 1000))
        # At 0.1%, 6 or more alarms in 1,000 draws has a chance below 0.1%.
        assert alarms <= 5, (rows, alarms)
        # Exactly, over every training table of 1,000 rows as well: at most 0.1%.
        empties = np.arange(200, 401)  # all but 1e-12 of training's chances at 30%
        allowed = [round(null_rate_ceiling(e / 1000, 1000, rows) * rows) for e in empties]
        chance = np.sum(stats.binom.pmf(empties, 1000, 0.3) * stats.binom.sf(allowed, rows, 0.3))
        assert chance <= NULL_RATE_FALSE_ALARM, (rows, chance)
    noisy = _gappy(200, 0.0, seed=5)
    noisy.loc[: 0.41 * 200 - 1, "discount"] = np.nan  # 41%: past the old flat 40%
    assert check_table(noisy, schema) == []


def test_a_column_30_percent_empty_fails_at_40_percent() -> None:
    schema = infer_schema(_gappy(1000, 0.3, seed=3))
    (violation,) = check_table(_gappy(5000, 0.4, seed=6), schema)
    assert (violation.column, violation.rule, violation.severity) == (
        "discount",
        "null_rate",
        "error",
    )
    ceiling = schema.column("discount").max_null_rate_for(5000)
    assert 0.33 < ceiling < 0.36 and violation.expected == (
        f"at most {ceiling:.1%} for 5000 rows (derived from training: "
        f"{schema.column('discount').null_rate:.1%} of 1000 rows)"
    )


def test_a_negligible_shift_in_a_huge_table_is_no_broken_feed() -> None:
    # 30.0 % against 30.6 % of a million rows is far beyond chance (Fisher alone would
    # alarm) but below the one-point margin; 31.5 % is past both.
    assert null_rate_ceiling(0.3, 100_000, 1_000_000) == pytest.approx(0.3 + NULL_RATE_MARGIN)
    schema = infer_schema(_gappy(100_000, 0.3, seed=8))
    assert check_table(_gappy(1_000_000, 0.306, seed=9), schema) == []
    (violation,) = check_table(_gappy(1_000_000, 0.315, seed=9), schema)
    assert violation.rule == "null_rate"


def _regions(north: float, south: float, seed: int, exact: bool = True) -> pd.DataFrame:
    """600 northern rows with ``discount`` empty in ``north`` of them, 300 southern."""
    return pd.concat([
        _gappy(600, north, seed, exact).assign(region="north"),
        _gappy(300, south, seed + 1, exact).assign(region="south"),
    ], ignore_index=True)  # fmt: skip


def test_segments_derive_their_ceilings_from_their_own_rows() -> None:
    schema = infer_schema(_regions(0.3, 0.0, seed=7), segment="region")
    south = schema.segments.values["south"]["discount"]
    assert (south.null_rate, south.rows, south.ceiling_derived) == (0.0, 300, True)
    table = _regions(0.3, 0.0, seed=9)
    south_rows = table.index[table["region"] == "south"]
    table.loc[south_rows[:12], "discount"] = np.nan  # 4% of the south, 1.3 points overall
    (violation,) = check_table(table, schema)
    assert str(violation) == (
        "column 'discount' in segment 'south' [null_rate]: 4.00% empty; expected at most "
        f"{south.max_null_rate_for(300, NULL_RATE_FALSE_ALARM / 2):.2%} for 300 rows (derived "
        "from training: 0.0% of "
        f"300 rows) (e.g. rows {', '.join(map(str, south_rows[:3]))})"
    )
    # Same-rate segments: 200 seeded tables break no ceiling, overall or in a segment.
    alarms = sum(
        any(v.rule == "null_rate" for v in check_table(_regions(0.3, 0, 100 + n, False), schema))
        for n in range(200)
    )
    assert alarms <= 2  # 2 checks can alarm (the south stays full): 0.2% at most, 0.4 in 200
    # An edited segment ceiling is a flat one.
    values = dict(schema.segments.values)
    values["south"] = {**values["south"], "discount": replace(south, max_null_rate=0.05)}
    edited = replace(schema, segments=replace(schema.segments, values=values))
    assert check_table(table, edited) == []


def test_a_written_schema_keeps_the_derived_ceiling_and_honours_an_edit(tmp_path: Path) -> None:
    schema = infer_schema(_juice(855, seed=1), "bought")
    written = json.loads(schema.to_json())
    price = next(column for column in written["columns"] if column["name"] == "price")
    assert (price["null_rate"], price["max_null_rate"], price["rows"]) == (0.0, 9 / 855, 855)
    test = _juice(215, seed=2)
    test.loc[test.index[:8], "price"] = np.nan  # 3.72%
    path = tmp_path / "schema.json"

    price["max_null_rate"] = 0.05  # a person allows 5% for any table
    path.write_text(json.dumps(written))
    edited = load_schema(path)
    assert not edited.column("price").ceiling_derived and check_table(test, edited) == []
    test.loc[test.index[:12], "price"] = np.nan  # 5.58%
    (violation,) = check_table(test, edited)
    assert violation.expected == "at most 5.00% as written (training: 0.0% of 855 rows)"

    for column in written["columns"]:  # a file written before rows were recorded
        column.pop("rows")
        column["max_null_rate"] = column["null_rate"] + 0.1
    path.write_text(json.dumps(written))
    old = load_schema(path)
    assert check_table(test, old) == []  # the flat 10 points, as before
    test.loc[test.index[:24], "price"] = np.nan  # 11.2%
    (violation,) = check_table(test, old)
    assert (violation.observed, violation.expected) == (
        "11.2% empty",
        "at most 10.0% (training: 0.0%)",
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_the_training_pipeline_s_validate_step_passes_its_own_splits(
    tmp_path: Path, breast_cancer: pd.DataFrame, species: pd.DataFrame, seed: int
) -> None:
    # A split is the exact case of the test: a hypergeometric draw of one table's rows.
    for name, table, target in [
        ("cancer", breast_cancer, "diagnosis"),
        ("species", species, "species"),
        ("gappy", _gappy(2000, 0.3, seed).assign(label=lambda t: t["units"] > 5), "label"),
    ]:
        (tmp_path / name).mkdir(exist_ok=True)
        train, test = split_table(table, target, 0.2, seed, name)
        paths = _splits(tmp_path / name, train, test)
        result = validate_splits(*paths, target, tmp_path / "s.json", tmp_path / "r.md")
        assert result.errors == [], (name, result.errors)


def test_many_segments_share_a_column_s_false_alarm_rate() -> None:
    """12 columns 2-40 % empty and 3 full, in 25 segments (a daily payload log of 2,000 rows
    against 20,000 training rows): checked at the full 0.1 % per segment, one same-rate day
    in five failed; shared by a column's segments, a day fails about as often as without
    segments (the bound: 12 columns x 2 x 0.1 % = 2.4 %)."""

    def day(seed: int, rows: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        columns = {"segment": rng.choice([f"s{i:02d}" for i in range(25)], rows)}
        for index, rate in enumerate(np.linspace(0.02, 0.4, 12)):
            values = rng.normal(size=rows)
            values[rng.uniform(size=rows) < rate] = np.nan
            columns[f"c{index}"] = values
        return pd.DataFrame(columns | {f"full{i}": rng.normal(size=rows) for i in range(3)})

    schema = infer_schema(day(0, 20_000), segment="segment")
    failed = sum(
        any(v.rule == "null_rate" for v in check_table(day(seed, 2000), schema, inputs_only=True))
        for seed in range(1, 201)
    )
    assert failed <= 10, f"{failed} of 200 same-rate days failed"
