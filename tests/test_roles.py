"""Column roles: one function decides what each column is, and every step agrees with it."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conveyor.components.core.data.columns import column_views
from conveyor.components.core.data.roles import (
    FEATURE_ROLES,
    ID_MIN_ROWS,
    UNDECLARED,
    DeclaredRoles,
    column_role,
    column_roles,
    date_parts,
)
from conveyor.components.core.data.schema import infer_schema, load_schema, settle_roles
from conveyor.components.core.data.tables import Source, load_arrow_table, read_parquet
from conveyor.components.core.data.validation import check_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.drift import compare_tables
from conveyor.components.core.training.trainer import (
    MODEL_CARD,
    fit_model,
    load_model_dir,
    save_model_dir,
)
from conveyor.pipelines.cli import main as conveyor
from tests.churn import churn_table
from tests.conftest import predictor

CHURN_ROLES = {
    "customer_id": "identifier",
    "signup_date": "datetime",
    "last_contact": "datetime",
    "plan": "categorical",
    "tenure_months": "numeric",
    "monthly_charges": "numeric",
    "paperless_billing": "numeric",
    "support_notes": "free_text",
}


def as_csv(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a CSV export reads back: dates and booleans with gaps become text."""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return pd.read_csv(io.StringIO(buffer.getvalue()))


def one_role(values: list, name: str = "column") -> str:
    (view,) = column_views(pa.table({name: values}), "test").values()
    return column_role(view)


@pytest.mark.parametrize("rows", [30, 600, 5000])
@pytest.mark.parametrize("read", ["frame", "csv", "parquet"])
def test_the_churn_table_s_roles_do_not_depend_on_its_size_or_how_it_was_read(
    tmp_path: Path, rows: int, read: str
) -> None:
    table = churn_table(rows, seed=rows)
    if read == "csv":
        table = as_csv(table)
    elif read == "parquet":
        as_csv(table).to_parquet(tmp_path / "churn.parquet")
        table = load_arrow_table(Source(str(tmp_path / "churn.parquet")))
    assert column_roles(table, "churned") == CHURN_ROLES


def test_validation_drift_and_training_agree_on_every_column_of_a_churn_table() -> None:
    reference, current = as_csv(churn_table(800, seed=1)), as_csv(churn_table(800, seed=2))
    roles = column_roles(reference, "churned")
    schema = infer_schema(reference, "churned")
    assert schema.roles() == roles == CHURN_ROLES
    # A payload log holds no label, no free text and nothing excluded.
    log = current.drop(columns=["churned", "support_notes"])
    drift = compare_tables(reference, log, exclude=("churned",))
    tested = {result.column for result in drift.overall}
    assert tested == {name for name, role in roles.items() if role in ("numeric", "categorical")}
    for name in set(roles) - tested:
        assert any(line.startswith(f"{name}: ") for line in drift.skipped), name
    model = fit_model(reference, "churned", "logistic_regression", {}, seed=0)
    assert {f.name: f.kind for f in model.card.features} == {
        name: role for name, role in roles.items() if role in FEATURE_ROLES
    }
    assert model.card.id_columns == ["customer_id"]
    assert check_table(reference, schema, split="training") == []
    assert check_table(log, schema, inputs_only=True) == []


def test_a_category_is_mistaken_for_an_identifier_at_the_stated_rate() -> None:
    """The birthday problem: 100 draws of 1,000 equally likely values are all distinct with
    probability prod(1 - i/1000), about 0.7 %; a seeded simulation finds that rate."""
    rng = np.random.default_rng(2026)
    trials, rows, values = 4000, ID_MIN_ROWS, 1000
    mistaken = sum(
        one_role([f"z{code}" for code in rng.integers(0, values, rows)]) == "identifier"
        for _ in range(trials)
    )
    exact = float(np.prod(1 - np.arange(rows) / values))
    assert exact == pytest.approx(np.exp(-rows * (rows - 1) / (2 * values)), rel=0.2)
    spread = 4 * np.sqrt(exact * (1 - exact) / trials)
    assert abs(mistaken / trials - exact) < spread, (mistaken, exact)
    # A column that truly identifies rows is always found.
    assert one_role([f"z{code}" for code in rng.permutation(values)[:rows]]) == "identifier"


def test_identifiers_need_distinct_values_and_enough_rows_or_an_id_like_name() -> None:
    distinct = [f"k{i}" for i in range(ID_MIN_ROWS)]
    assert one_role(distinct) == "identifier"
    assert one_role(distinct[:-1]) == "categorical"  # too few rows to tell
    assert one_role(distinct[:5], "order_id") == "identifier"
    assert one_role([*distinct, "k0"]) == "categorical"  # one repeat: a category
    assert one_role(list(range(50)), "customerId") == "identifier"
    assert one_role(list(range(50)), "amount") == "numeric"
    assert one_role(list(range(50)), "paid") == "numeric"  # "...id" in a word is no id
    assert one_role([0.5 + i for i in range(50)], "score_id") == "numeric"  # not whole
    assert one_role([True, False], "is_id") == "numeric"
    big = (2**60 + np.arange(200)).tolist()  # neighbours share a float64
    assert one_role(big, "order_id") == "identifier"


def test_dates_are_found_in_text_and_in_date_types_and_only_when_every_value_is_one() -> None:
    assert one_role(["2024-03-01", "2024-03-02", None]) == "datetime"
    assert one_role(["2024-03-01T10:00:00Z", "2024-03-01 11:30:00+02:00"]) == "datetime"
    assert one_role(["2024-03-01", "next week"]) == "categorical"
    assert one_role(["2024-02-30"]) == "categorical"  # shaped like a date, but none
    # An export's sentinels (a tenth of the rows at most) do not make dates a category.
    days = [f"2024-03-{day:02d}" for day in range(1, 31)]
    assert one_role([*days, "0000-00-00", "9999-12-31", "unknown"]) == "datetime"
    assert one_role([*days[:5], "unknown"]) == "categorical"
    stamps = pa.array([0, 86_400_000_000], pa.timestamp("us", tz="UTC"))
    (view,) = column_views(pa.table({"at": stamps}), "test").values()
    assert column_role(view) == "datetime"


def test_a_date_becomes_year_month_weekday_and_days_since_the_reference() -> None:
    table = pd.DataFrame({"at": ["2024-03-01", "2024-03-04T23:00:00-02:00", None, "soon"]})
    parts = date_parts(table, reference="2024-02-28")
    # 2024-03-01 is a Friday; 23:00 at -02:00 is 01:00 UTC on Tuesday the 5th.
    assert parts[0].tolist() == [2024, 3, 4, 2.0]
    assert parts[1].tolist() == [2024, 3, 1, pytest.approx(6 + 1 / 24)]
    assert np.isnan(parts[2:]).all()


def test_free_text_is_left_out_unless_named_and_then_learned_from() -> None:
    table = as_csv(churn_table(400, seed=3))
    assert column_roles(table, "churned")["support_notes"] == "free_text"
    declared = DeclaredRoles(text_columns=("support_notes",), exclude_columns=("last_contact",))
    roles = column_roles(table, "churned", declared)
    assert (roles["support_notes"], roles["last_contact"]) == ("text", "excluded")
    model = fit_model(table, "churned", "logistic_regression", {}, 0, roles=roles)
    kinds = {f.name: f.kind for f in model.card.features}
    assert kinds["support_notes"] == "text" and "last_contact" not in kinds
    # A note's words change the score; a missing note (None or NaN) is an empty one.
    rows = table.head(3).copy()
    base = model.pipeline.predict_proba(rows.assign(support_notes=""))
    missing = model.pipeline.predict_proba(rows.assign(support_notes=[None, np.nan, None]))
    worded = model.pipeline.predict_proba(rows.assign(support_notes="wants a discount or switch"))
    assert np.allclose(base, missing) and not np.allclose(base, worded)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            dict(id_columns=("plan",), exclude_columns=("plan",)),
            "exclude_columns: column 'plan' is also in id_columns; give each column one role",
        ),
        (dict(text_columns="support_notes"), "text_columns: expected a list of column names"),
        (dict(exclude_columns=("nope",)), "exclude_columns: table has no column 'nope'"),
        (dict(text_columns=("churned",)), "text_columns: 'churned' is the label column"),
    ],
)
def test_declared_roles_that_cannot_hold_are_one_line(declared: dict, message: str) -> None:
    with pytest.raises(ConveyorError, match=message.replace("(", r"\(")):
        column_roles(churn_table(50), "churned", DeclaredRoles(**declared))


def test_validation_checks_dates_and_identifiers_and_spares_a_payload_log() -> None:
    training = as_csv(churn_table(300, seed=4))
    schema = infer_schema(training, "churned")
    broken = training.copy()
    broken.loc[7, "signup_date"] = "03/01/2024"
    broken.loc[9, "customer_id"] = broken.loc[8, "customer_id"]
    found = {(v.column, v.rule): v for v in check_table(broken, schema)}
    stray = found[("signup_date", "date_format")]
    assert (stray.rows, stray.severity) == ((7,), "warning")  # read as a missing date
    assert "03/01/2024" in stray.observed
    assert found[("customer_id", "unique_key")].rows == (8, 9)
    # A log repeats customers, holds no free text, and may lack the id (a request need not
    # send it; payload_log_exclude may keep it out): none of it is a violation there.
    log = broken.drop(columns=["churned", "support_notes"]).drop(index=7)
    assert check_table(log, schema, inputs_only=True) == []
    assert check_table(log.drop(columns="customer_id"), schema, inputs_only=True) == []
    assert [v.rule for v in check_table(log.drop(columns="plan"), schema, inputs_only=True)] == [
        "presence"
    ]


def test_a_model_with_date_features_is_format_3_and_older_formats_cannot_claim_one(
    tmp_path: Path,
) -> None:
    model = fit_model(as_csv(churn_table(200)), "churned", "logistic_regression", {}, 0)
    card = save_model_dir(model, tmp_path / "model")
    assert card.format_version == 3
    path = tmp_path / "model" / MODEL_CARD
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 2}))
    with pytest.raises(ConveyorError, match=r"'datetime' needs model format 3, the card says 2"):
        load_model_dir(tmp_path / "model")


def test_the_served_model_takes_requests_with_or_without_the_left_out_columns(
    tmp_path: Path,
) -> None:
    table = as_csv(churn_table(300, seed=5))
    model = fit_model(table, "churned", "logistic_regression", {}, 0)
    save_model_dir(model, tmp_path / "model")
    rows = table.head(4).drop(columns="churned")
    records = json.loads(rows.to_json(orient="records"))
    expected = model.pipeline.predict(rows).tolist()
    features = [f.name for f in model.card.features]
    with predictor(tmp_path / "model", "churn", "churn-00001", tmp_path / "log") as url:
        predict = f"{url}/v1/models/churn:predict"
        full = httpx.post(predict, json={"instances": records})
        bare = httpx.post(
            predict, json={"instances": [{k: r[k] for k in features} for r in records]}
        )
        assert full.json()["predictions"] == bare.json()["predictions"] == expected
        records[1]["signup_date"] = "12/02/2024"
        refused = httpx.post(predict, json={"instances": records})
    assert refused.status_code == 400
    assert "signup_date (expected ISO 8601 dates such as 2024-03-01)" in refused.text


def test_a_schema_s_roles_are_what_training_reads(tmp_path: Path) -> None:
    table = as_csv(churn_table(200, seed=6))
    table.to_parquet(tmp_path / "train.parquet")
    roles = {**CHURN_ROLES, "plan": "excluded"}  # as an edited schema would say
    model = fit_model(read_parquet(tmp_path / "train.parquet"), "churned",
                           "logistic_regression", {}, 0, roles=roles)  # fmt: skip
    assert "plan" not in [f.name for f in model.card.features]


def test_validate_write_schema_takes_declared_roles(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    churn_table(100, seed=8).to_csv(tmp_path / "churn.csv", index=False)
    schema = tmp_path / "schema.json"
    common = ["validate", "--data", str(tmp_path / "churn.csv"), "--schema", str(schema)]
    declared = ["--text-column", "support_notes", "--exclude-column", "plan"]
    assert conveyor([*common, "--write-schema", "--label", "churned", *declared]) == 0
    roles = load_schema(schema).roles()
    assert roles == {**CHURN_ROLES, "support_notes": "text", "plan": "excluded"}
    assert conveyor([*common, "--text-column", "support_notes"]) == 2
    assert "--*-column describe a new schema: add --write-schema" in capsys.readouterr().err


@pytest.mark.parametrize("estimator", ["logistic_regression", "hist_gradient_boosting"])
def test_text_features_train_with_every_estimator_whatever_the_column_s_name(
    estimator: str,
) -> None:
    table = as_csv(churn_table(200, seed=9)).rename(columns={"support_notes": "support__notes"})
    roles = column_roles(table, "churned", DeclaredRoles(text_columns=("support__notes",)))
    model = fit_model(table, "churned", estimator, {}, 0, roles=roles)
    assert "support__notes" in [f.name for f in model.card.features]
    assert model.pipeline.predict(table.head(5)).shape == (5,)


def test_a_text_feature_needs_words_and_text(tmp_path: Path) -> None:
    table = as_csv(churn_table(100, seed=10)).assign(support_notes=["-", None] * 50)
    roles = column_roles(table, "churned", DeclaredRoles(text_columns=("support_notes",)))
    with pytest.raises(ConveyorError, match=r"^text_columns: 'support_notes' holds no words"):
        fit_model(table, "churned", "logistic_regression", {}, 0, roles=roles)
    with pytest.raises(ConveyorError, match=r"^text_columns: 'tenure_months' holds int64 values"):
        column_roles(table, "churned", DeclaredRoles(text_columns=("tenure_months",)))


def test_declared_roles_apply_over_a_given_schema_and_an_old_one_is_settled(
    tmp_path: Path,
) -> None:
    table = as_csv(churn_table(300, seed=11))
    given = infer_schema(table, "churned")
    declared = DeclaredRoles(exclude_columns=("monthly_charges",), text_columns=("support_notes",))
    settled = settle_roles(given, table, declared, "training split")
    assert settled.roles() == {
        **CHURN_ROLES, "monthly_charges": "excluded", "support_notes": "text"
    }  # fmt: skip
    assert settled.column("monthly_charges").allowed_max is None  # no range on an excluded one
    # A schema from before roles were recorded: kinds numeric or categorical only.
    old = replace(given, roles_recorded=False, columns=[
        replace(c, kind="numeric" if c.kind == "numeric" else "categorical")
        for c in given.columns
    ])  # fmt: skip
    assert old.recorded_roles() is None
    assert settle_roles(old, table, UNDECLARED, "training split").roles() == CHURN_ROLES
    with pytest.raises(ConveyorError, match="text_columns: 'tenure_months' holds numbers"):
        settle_roles(given, table, DeclaredRoles(text_columns=("tenure_months",)), "split")


def test_a_format_3_model_names_the_date_function_it_pickles() -> None:
    """Models pickle ``date_parts`` by this name: moving it breaks every model trained."""
    assert f"{date_parts.__module__}.{date_parts.__name__}" == (
        "conveyor.components.core.data.roles.date_parts"
    )


def test_a_time_without_an_offset_is_utc_whatever_offset_another_row_has() -> None:
    """pandas alone reads "10:00" after "10:00+05:00" as 05:00 UTC: in one request, or in a
    batch of requests (``serving.batching``), one row would move another's time."""
    values = ["2024-03-01T10:00:00+05:00", "2024-03-01T10:00:00", "2024-03-01", None]
    values += ["2024-03-01 10:00Z", "2024-03-01T10:00-03", "not a date"]
    parts = date_parts(np.array(values, dtype=object).reshape(-1, 1), "2024-03-01")
    hours = [5, 10, 0, None, 10, 13, None]
    expected = [np.nan if hour is None else hour / 24 for hour in hours]
    np.testing.assert_allclose(parts[:, 3], expected)
    alone = date_parts(np.array(values[1:2], dtype=object).reshape(-1, 1), "2024-03-01")
    np.testing.assert_array_equal(alone[0], parts[1])
