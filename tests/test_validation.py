"""Validation rules beyond the basics: severity per rule from an edited schema file, row-count
bounds, unique keys, duplicate rows, per-segment checks, the Arrow and pandas paths agreeing,
``conveyor validate``, and each kind of bad input."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from kfp.dsl import Artifact, Dataset, Markdown

from conveyor.components.core.data.schema import Schema, infer_schema, load_schema
from conveyor.components.core.data.tables import Source, load_arrow_table
from conveyor.components.core.data.validation import check_table, validate_file
from conveyor.components.core.errors import ConveyorError
from conveyor.components.validate import validate
from conveyor.components.validate_inputs import validate_inputs
from conveyor.pipelines.cli import main
from tests.conftest import artifact, transactions


@pytest.fixture
def reference() -> pd.DataFrame:
    return transactions(2000, seed=1).assign(id=np.arange(2000))


@pytest.fixture
def schema(reference: pd.DataFrame) -> Schema:
    return infer_schema(reference, segment="segment", keys=("id",))


def found(table: pd.DataFrame, schema: Schema, **options) -> dict[tuple[str, str, str], object]:
    return {(v.column, v.rule, v.segment): v for v in check_table(table, schema, **options)}


def test_fresh_rows_like_the_reference_break_no_rule(schema: Schema) -> None:
    fresh = transactions(2000, seed=2).assign(id=np.arange(2000))
    assert [v for v in check_table(fresh, schema) if v.severity == "error"] == []


def test_a_violation_names_column_rule_observed_expected_and_rows(
    reference: pd.DataFrame, schema: Schema
) -> None:
    table = reference.copy()
    table.loc[[4, 9, 30, 31] + list(range(100, 500)), "age"] = np.nan
    violation = found(table, schema)[("age", "null_rate", "")]
    assert (violation.observed, violation.severity, violation.rows) == (
        "20.2% empty",
        "error",
        (4, 9, 30),
    )
    assert violation.expected == (
        "at most 1.00% for 2000 rows (derived from training: 0.0% of 2000 rows)"
    )
    assert str(violation) == (
        "column 'age' [null_rate]: 20.2% empty; expected at most 1.00% for 2000 rows "
        "(derived from training: 0.0% of 2000 rows) (e.g. rows 4, 9, 30)"
    )


def test_severity_comes_from_the_schema_then_the_column(
    reference: pd.DataFrame, schema: Schema
) -> None:
    table = reference.copy()
    table.loc[7, "amount"] = 1e9
    table.loc[: len(table) // 2, "age"] = np.nan
    assert found(table, schema)[("amount", "range", "")].severity == "warning"
    columns = [
        replace(column, severity={"null_rate": "warning"}) if column.name == "age" else column
        for column in schema.columns
    ]
    edited = replace(schema, columns=columns, severity={"range": "error", "duplicate_rows": "off"})
    violations = found(table, edited)
    assert violations[("amount", "range", "")].severity == "error"
    assert violations[("age", "null_rate", "")].severity == "warning"
    off = replace(edited, severity={"range": "off"})
    assert ("amount", "range", "") not in found(table, off)


def test_row_count_bounds(reference: pd.DataFrame, schema: Schema) -> None:
    bounded = replace(schema, min_rows=500, max_rows=1500)
    (violation,) = [v for v in check_table(reference, bounded) if v.rule == "row_count"]
    assert (violation.observed, violation.expected) == (
        "2000 rows",
        "at least 500 and at most 1500 rows",
    )
    assert str(violation).startswith("table [row_count]: 2000 rows")
    assert not [v for v in check_table(reference.iloc[:600], bounded) if v.rule == "row_count"]


def test_repeated_keys_and_duplicate_rows_name_their_rows(
    reference: pd.DataFrame, schema: Schema
) -> None:
    table = reference.copy()
    table.loc[11, "id"] = 3  # a key reused by a different row
    table.loc[20] = table.loc[19]  # an exact copy, key and all
    violations = found(table, schema)
    key = violations[("id", "unique_key", "")]
    assert (key.severity, key.rows, key.observed) == (
        "error",
        (3, 11, 19),
        "4 rows share their key with another row",
    )
    copies = violations[("", "duplicate_rows", "")]
    assert (copies.severity, copies.rows) == ("warning", (19, 20))


def test_integer_keys_past_2_53_are_compared_exactly(tmp_path: Path) -> None:
    ids = pa.array(2**60 + np.arange(1000, dtype=np.int64))  # neighbours share a float64
    table = pa.table({"id": ids, "amount": pa.array(np.arange(1000.0))})
    schema = infer_schema(table, keys=("id",))
    assert check_table(table, schema) == []
    copied = pa.table({"id": pa.concat_arrays([ids, ids[7:8]]), "amount": np.arange(1001.0)})
    (key,) = [v for v in check_table(copied, schema) if v.rule == "unique_key"]
    assert (key.observed, key.rows) == ("2 rows share their key with another row", (7, 1000))


def test_empty_keys_are_reported_apart_from_repeated_ones(
    reference: pd.DataFrame, schema: Schema
) -> None:
    table = reference.assign(id=reference["id"].astype(float))
    table.loc[[5, 6], "id"] = np.nan  # two empty keys: incomplete, not copies of each other
    table.loc[9, "id"] = 8
    keys = [v for v in check_table(table, schema) if v.rule == "unique_key"]
    assert [(v.observed, v.rows) for v in keys] == [
        ("2 rows have an empty key", (5, 6)),
        ("2 rows share their key with another row", (8, 9)),
    ]


@pytest.mark.parametrize(
    ("keys", "schema_level", "column_level", "reported"),
    [
        (("id",), "off", "warning", ["warning"]),  # the column's own setting wins
        (("id",), "error", "off", []),
        (("segment", "id"), "error", "warning", ["warning"]),  # a key column's, for the key
        (("segment", "id"), "off", "error", ["error"]),
    ],
)
def test_a_key_column_sets_its_key_s_unique_key_severity(
    reference: pd.DataFrame, keys: tuple, schema_level: str, column_level: str, reported: list
) -> None:
    schema = infer_schema(reference, keys=keys)
    columns = [
        replace(c, severity={"unique_key": column_level}) if c.name == "id" else c
        for c in schema.columns
    ]
    edited = replace(schema, columns=columns, severity={"unique_key": schema_level})
    table = reference.assign(id=0)
    found = [v.severity for v in check_table(table, edited) if v.rule == "unique_key"]
    assert found == reported


def test_a_column_of_ids_gets_no_list_of_categories(reference: pd.DataFrame) -> None:
    orders = reference.assign(order=[f"o-{n}" for n in range(len(reference))])
    schema = infer_schema(orders)
    assert schema.column("order").categories is None
    assert schema.column("segment").categories == sorted(reference["segment"].unique())
    fresh = orders.assign(order=[f"o-{n}" for n in range(5000, 5000 + len(orders))])
    assert [v for v in check_table(fresh, schema) if v.column == "order"] == []


def test_a_parquet_file_with_its_pandas_index_reads_without_it(
    tmp_path: Path, reference: pd.DataFrame, schema: Schema
) -> None:
    sample = reference.sample(frac=0.5, random_state=0)  # shuffled: pandas writes its index
    sample.to_parquet(tmp_path / "sample.parquet")
    arrow = load_arrow_table(Source(str(tmp_path / "sample.parquet")))
    assert arrow.column_names == list(reference.columns)
    assert [v for v in check_table(arrow, schema) if v.rule == "presence"] == []


def test_rows_equal_in_all_but_one_column_are_not_copies(reference: pd.DataFrame) -> None:
    missing_age = reference.iloc[[0]].assign(age=np.nan)
    table = pd.concat(
        [reference.iloc[:50], reference.iloc[:50].assign(age=-1.0), missing_age, missing_age]
    )  # only the last two rows are copies: NaN equals NaN
    schema = infer_schema(table.iloc[:10])
    (copies,) = [v for v in check_table(table, schema) if v.rule == "duplicate_rows"]
    assert copies.observed == "2 rows are exact copies of another row"


def _with_gaps(table: pd.DataFrame, column: str, share: float, seed: int) -> pd.DataFrame:
    """``table`` with ``column`` empty in a seeded ``share`` of its rows."""
    empty = np.random.default_rng(seed).random(len(table)) < share
    return table.assign(**{column: table[column].mask(empty)})


def test_a_null_spike_within_one_segment_is_caught_where_the_whole_table_is_not() -> None:
    reference = _with_gaps(transactions(2000, seed=1), "amount", 0.2, seed=11)
    schema = infer_schema(reference, segment="segment")
    table = _with_gaps(transactions(2000, seed=3), "amount", 0.2, seed=13)
    business = table.index[table["segment"] == "business"]
    table.loc[business[: len(business) * 6 // 10], "amount"] = np.nan  # 20% -> about 68%
    violations = found(table, schema)
    assert ("amount", "null_rate", "") not in violations  # about 2.5 points more overall
    spike = violations[("amount", "null_rate", "business")]
    assert spike.severity == "error" and spike.rows[0] == business[0]
    described = schema.segments.values["business"]["amount"]
    assert str(spike).startswith(
        "column 'amount' in segment 'business' [null_rate]: "
    ) and spike.expected.endswith(
        f"for {len(business)} rows (derived from training: "
        f"{described.null_rate:.1%} of {described.rows} rows)"
    )


def test_a_value_usual_overall_but_not_in_its_segment_is_out_of_the_segment_range() -> None:
    reference = transactions(3000, seed=1)
    vip = reference["segment"] == "vip"
    reference.loc[vip, "amount"] += 5000  # vip amounts live far above everyone else's
    schema = infer_schema(reference, segment="segment")
    table = transactions(3000, seed=2)
    table.loc[table["segment"] == "vip", "amount"] += 5000
    retail = table.index[table["segment"] == "retail"][:2]
    table.loc[retail, "amount"] = 5050.0  # a vip-sized amount on a retail row
    violations = found(table, schema)
    assert ("amount", "range", "") not in violations
    outside = violations[("amount", "range", "retail")]
    assert outside.rows == tuple(retail) and outside.observed.startswith("2 value(s) outside")
    assert outside.severity == "warning"


def test_a_segment_too_small_in_the_checked_table_is_not_judged(
    reference: pd.DataFrame, schema: Schema
) -> None:
    table = transactions(2000, seed=3, vip_share=0.01).assign(id=np.arange(2000))
    table.loc[table["segment"] == "vip", "age"] = np.nan  # about 20 rows, below 30
    assert not [v for v in check_table(table, schema) if v.segment == "vip"]


def test_inputs_only_tables_need_no_target(species: pd.DataFrame) -> None:
    schema = infer_schema(species, "species")
    inputs = species.drop(columns=["species"])
    assert check_table(inputs, schema, inputs_only=True) == []
    (missing,) = check_table(inputs, schema)
    assert (missing.column, missing.rule) == ("species", "presence")


def test_parquet_read_into_arrow_and_pandas_tables_agree(
    tmp_path: Path, reference: pd.DataFrame, schema: Schema
) -> None:
    table = reference.copy()
    table.loc[[5, 6], "channel"] = "phone"
    table.loc[:400, "age"] = np.nan
    table.loc[8, "amount"] = np.inf
    table.to_parquet(tmp_path / "t.parquet")
    arrow = load_arrow_table(Source(str(tmp_path / "t.parquet")))
    assert check_table(arrow, schema) == check_table(table, schema)
    assert {(v.column, v.rule) for v in check_table(arrow, schema)} == {
        ("channel", "allowed_categories"),
        ("age", "null_rate"),
        ("amount", "finite"),
    }


def test_the_schema_file_round_trips_and_edits_are_checked(tmp_path: Path, schema: Schema) -> None:
    path = tmp_path / "schema.json"
    path.write_text(schema.to_json())
    assert load_schema(path) == schema
    edits = {
        "unknown field(s) ['maxnull']": lambda d: d["columns"][0].update(maxnull=0.1),
        "severity: range is 'fatal', expected error, warning or off": lambda d: d.update(
            severity={"range": "fatal"}
        ),
        "unknown rule 'ranges'": lambda d: d["columns"][1].update(severity={"ranges": "off"}),
        "key column 'order_id' is not among the columns": lambda d: d.update(keys=["order_id"]),
        "columns[0] ('amount'): kind: expected one of numeric, categorical, datetime, text, identifier, excluded, free_text, found 'number'": (
            lambda d: d["columns"][0].update(kind="number")
        ),
        "columns[1] ('age'): allowed_max: expected a number, found '90'": (
            lambda d: d["columns"][1].update(allowed_max="90")
        ),
        "columns[1] ('age'): max_null_rate: expected a number, found None": (
            lambda d: d["columns"][1].update(max_null_rate=None)
        ),
        "columns[1] ('age'): null_rate: expected a share from 0 to 1, found 5": (
            lambda d: d["columns"][1].update(null_rate=5)
        ),
        "columns[2] ('rating'): categories: expected a list of text, found [1, 2]": (
            lambda d: d["columns"][2].update(categories=[1, 2])
        ),
        "keys: expected a list of text, found 'id'": lambda d: d.update(keys="id"),
        "min_rows: expected a whole number, 0 or more, found True": (
            lambda d: d.update(min_rows=True)
        ),
        "max_rows 10 is below min_rows": lambda d: d.update(min_rows=100, max_rows=10),
        "column(s) ['age'] described more than once": (
            lambda d: d["columns"].append(dict(d["columns"][1]))
        ),
        "columns[1] ('age'): allowed_min 90 is above allowed_max 10": (
            lambda d: d["columns"][1].update(allowed_min=90, allowed_max=10)
        ),
        "columns[1] ('age'): allowed_max: expected a number, found nan": (
            lambda d: d["columns"][1].update(allowed_max=float("nan"))
        ),
        "segments: min_rows: expected a whole number, 0 or more, found -1": (
            lambda d: d["segments"].update(min_rows=-1)
        ),
        "segments: business: column(s) ['tenure'] are not among the columns": (
            lambda d: d["segments"]["values"]["business"].update(
                tenure=d["segments"]["values"]["business"]["age"]
            )
        ),
        "segments: business: amount: allowed_min: expected a number, found 'low'": (
            lambda d: d["segments"]["values"]["business"]["amount"].update(allowed_min="low")
        ),
    }
    for message, edit in edits.items():
        data = json.loads(schema.to_json())
        edit(data)
        path.write_text(json.dumps(data))
        with pytest.raises(ConveyorError, match=re.escape(message)) as raised:
            load_schema(path)
        assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)
    path.write_text("{not json")
    with pytest.raises(ConveyorError, match="schema.json: not JSON"):
        load_schema(path)
    with pytest.raises(ConveyorError, match="schema file not found"):
        load_schema(tmp_path / "absent.json")
    with pytest.raises(ConveyorError, match="nosuch://schema.json: cannot read the schema"):
        load_schema("nosuch://schema.json")


def test_a_range_bound_left_empty_is_open(reference: pd.DataFrame, schema: Schema) -> None:
    amount = schema.column("amount")
    edited = replace(
        schema,
        columns=[
            replace(c, allowed_max=None, min=None) if c is amount else c for c in schema.columns
        ],
    )
    table = reference.copy()
    table.loc[[3, 4], "amount"] = [amount.allowed_max * 10, amount.allowed_min - 1]
    outside = found(table, edited)[("amount", "range", "")]
    assert outside.rows == (4,) and outside.observed.startswith("1 value(s) outside")
    assert outside.expected == (
        f"[{amount.allowed_min:.6g}, inf] (training saw [n/a, {amount.max:.6g}])"
    )


def test_conveyor_validate_writes_a_schema_a_person_edits_then_checks_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, reference: pd.DataFrame
) -> None:
    reference.to_parquet(tmp_path / "reference.parquet")
    schema_path = tmp_path / "conf" / "schema.json"
    write = [
        "validate",
        "--data",
        str(tmp_path / "reference.parquet"),
        "--schema",
        str(schema_path),
    ]
    assert main([*write, "--write-schema", "--segment", "segment", "--key", "id"]) == 0
    assert capsys.readouterr().out.strip().endswith("6 columns, 0 warning(s)")
    edited = json.loads(schema_path.read_text())
    edited["max_rows"] = 1000
    edited["severity"]["range"] = "error"
    schema_path.write_text(json.dumps(edited))

    fresh = transactions(800, seed=4).assign(id=np.arange(800))
    fresh.to_csv(tmp_path / "fresh.csv", index=False)
    check = ["validate", "--data", str(tmp_path / "fresh.csv"), "--schema", str(schema_path)]
    assert main([*check, "--report", str(tmp_path / "report.md")]) == 0
    assert capsys.readouterr().out.strip().startswith("Passed: 6 columns")

    fresh.loc[3, "amount"] = 1e7
    fresh.loc[:, "channel"] = fresh["channel"].replace("atm", "kiosk")
    fresh.to_csv(tmp_path / "bad.csv", index=False)
    bad = ["validate", "--data", str(tmp_path / "bad.csv"), "--schema", str(schema_path)]
    assert main([*bad, "--report", str(tmp_path / "report.md")]) == 3
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "Failed: 2 rule(s) violated, 0 warning(s)"
    assert any(line.startswith("error    column 'amount' [range]: 1 value(s)") for line in lines)
    assert any("'kiosk'" in line and "[allowed_categories]" in line for line in lines)
    report = (tmp_path / "report.md").read_text()
    assert "**Failed**: 2 rule(s) violated." in report and "| `amount` | - | range |" in report


def test_conveyor_validate_writes_no_schema_a_table_cannot_have(
    tmp_path: Path, capsys: pytest.CaptureFixture, reference: pd.DataFrame
) -> None:
    reference.assign(id=reference["id"] // 2).to_csv(tmp_path / "t.csv", index=False)
    schema_path = tmp_path / "schema.json"
    args = ["validate", "--data", str(tmp_path / "t.csv"), "--schema", str(schema_path)]
    assert main([*args, "--write-schema", "--key", "id"]) == 3
    assert "[unique_key]: 2000 rows share their key" in capsys.readouterr().out
    assert not schema_path.exists()
    assert main([*args, "--segment", "segment"]) == 2
    assert "add --write-schema" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.assign(age=t["age"].astype(str).where(t.index > 3, "forty")),
         ("age", "type", "object values such as 'forty'")),
        (lambda t: t.assign(rating=pd.to_datetime("2026-01-01") + pd.to_timedelta(t["rating"], "D")),
         ("rating", "type", "object values such as '2026-01-0")),
        (lambda t: t.assign(age=t["age"].where(t.index != 7, np.inf)),
         ("age", "finite", "1 infinite value(s), such as inf")),
        (lambda t: t.assign(age=t["age"].where(t.index > 600)), ("age", "null_rate", "30.0% empty")),
        (lambda t: t.assign(channel=t["channel"].where(t.index != 2, "crypto")),
         ("channel", "allowed_categories", "1 category never seen in training, 'crypto', in 1 row")),
        (lambda t: t.rename(columns={"age": "age_years"}), ("age", "presence", "column is missing")),
    ],
)  # fmt: skip
def test_bad_input_is_a_reported_violation(
    tmp_path: Path, reference: pd.DataFrame, schema: Schema, change, expected
) -> None:
    column, rule, observed = expected
    change(transactions(2000, seed=5).assign(id=np.arange(2000))).to_csv(
        tmp_path / "bad.csv", index=False
    )
    result = validate_file(str(tmp_path / "bad.csv"), _written(tmp_path, schema))
    (violation,) = [v for v in result.errors if (v.column, v.rule) == (column, rule)]
    assert violation.observed.startswith(observed)


def test_a_renamed_column_names_the_column_the_schema_does_not_know(
    reference: pd.DataFrame, schema: Schema
) -> None:
    (violation,) = check_table(reference.rename(columns={"age": "age_years"}), schema)
    assert violation.observed == "column is missing (not in the schema: 'age_years')"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"amount,age\n1,\xff\n", "not UTF-8 text (byte 0xff"),
        (b"PAR1\x00\x01broken", "not a readable Parquet file"),
        (b"amount,age,age\n1,2,3\n", "duplicated column name(s) ['age']"),
    ],
)
def test_unreadable_tables_are_one_line_on_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, schema: Schema, content: bytes, message: str
) -> None:
    name = "bad.parquet" if content.startswith(b"PAR1") else "bad.csv"
    (tmp_path / name).write_bytes(content)
    args = ["validate", "--data", str(tmp_path / name), "--schema", str(_written(tmp_path, schema))]
    assert main([*args, "--report", str(tmp_path / "report.md")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and str(tmp_path / name) in error
    assert not (tmp_path / "report.md").exists()


def test_duplicated_parquet_column_names_are_refused(tmp_path: Path, schema: Schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([[1.0], [2.0]], names=["age", "age"]), tmp_path / "d.parquet")
    with pytest.raises(ConveyorError, match=re.escape("duplicated column name(s) ['age']")):
        validate_file(str(tmp_path / "d.parquet"), _written(tmp_path, schema))


def test_the_validate_component_uses_a_committed_schema(
    tmp_path: Path, reference: pd.DataFrame, schema: Schema
) -> None:
    reference.iloc[:1500].to_parquet(tmp_path / "train")
    reference.iloc[1500:].to_parquet(tmp_path / "test")
    strict = replace(schema, min_rows=1000)  # the evaluation split has 500 rows
    committed = tmp_path / "committed.json"
    committed.write_text(strict.to_json())
    outputs = dict(
        train=artifact(Dataset, tmp_path, "train"),
        test=artifact(Dataset, tmp_path, "test"),
        target_column="",
        schema=artifact(Artifact, tmp_path, "schema.json"),
        report=artifact(Markdown, tmp_path, "report.md"),
    )
    with pytest.raises(SystemExit) as failed:
        validate.python_func(**outputs, schema_uri=str(committed))
    assert str(failed.value).splitlines()[1:] == [
        "evaluation split: table [row_count]: 500 rows; expected at least 1000 rows"
    ]
    assert (
        "| evaluation | (table) | - | row_count | 500 rows |"
        in Path(outputs["report"].path).read_text()
    )
    validate.python_func(**outputs, schema_uri="")  # inferred: only the warnings remain
    assert outputs["schema"].metadata["source"] == "inferred from the training split"


def test_the_validate_inputs_component_fails_on_a_broken_feed(
    tmp_path: Path, species: pd.DataFrame
) -> None:
    schema_file = artifact(Artifact, tmp_path, "schema.json")
    Path(schema_file.path).write_text(infer_schema(species, "species").to_json())
    inputs = species.drop(columns=["species"])
    inputs.to_parquet(tmp_path / "fine")
    report = artifact(Markdown, tmp_path, "report.md")
    validate_inputs.python_func(artifact(Dataset, tmp_path, "fine"), schema_file, report)
    assert "**Passed**" in Path(report.path).read_text()
    inputs.assign(color="purple").to_parquet(tmp_path / "broken")
    with pytest.raises(SystemExit) as failed:
        validate_inputs.python_func(artifact(Dataset, tmp_path, "broken"), schema_file, report)
    assert str(failed.value).startswith("validate_inputs: 1 rule(s) violated")
    assert "'purple'" in Path(report.path).read_text()


def _written(directory: Path, schema: Schema) -> Path:
    path = directory / "schema.json"
    path.write_text(schema.to_json())
    return path
