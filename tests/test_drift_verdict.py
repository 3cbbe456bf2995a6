"""The drift verdict, seeded, on a credit-like table (ISLR's ``Default``: student, balance,
income; plus a region of five values), and the rule that weighs columns by importance.

Error rates measured here with the default settings (alpha 0.01, PSI and Jensen–Shannon
thresholds 0.1, importance_threshold 0.1, weighted_share 0.3):

- false alarms: 500 same-distribution runs, reference 5,000 rows, current 1,000 rows in 5
  regions of 200, judged overall and per region (18 column tests): 8 drifted (1.6 %; the
  test's bound is 5 %, the noise test's 1 %). Without the noise test, some column passed its
  threshold in 465 runs and Evidently's share rule flagged 245: the false alarms the issue
  reports for segments of 150–200 rows.
- misses: 200 runs with ``balance`` ×1.6 for students only, judged per ``student``: all 200
  drifted, naming ``balance`` in ``student=Yes`` (the test's bound is 95 %); the
  share-of-columns rule (1 of 3 columns, below its 50 %) flagged none: the incident.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.drift import (
    DriftReport,
    DriftSettings,
    compare_tables,
    load_importance,
)
from conveyor.components.core.monitoring.drift_report import describe
from conveyor.components.drift import drift
from conveyor.pipelines.cli import main
from tests.conftest import artifact

REGIONS = np.array(["north", "south", "east", "west", "central"], dtype=object)


def credit_tables(
    rng: np.random.Generator, draws: int, rows: int, student_balance: float = 1.0
) -> list[pd.DataFrame]:
    """``draws`` tables of ``rows`` rows, drawn at once: about 30 % students, whose balance
    is higher and income lower; ``rows / 5`` rows in each region. ``student_balance``
    multiplies the students' balances (the shift of the incident)."""
    shape = (draws, rows)
    student = rng.random(shape) < 0.3
    balance = np.where(student, rng.normal(990, 490, shape), rng.normal(745, 450, shape))
    balance = balance.clip(0) * np.where(student, student_balance, 1.0)
    income = np.where(student, rng.normal(17950, 4800, shape), rng.normal(40000, 10000, shape))
    region = np.repeat(REGIONS, rows // len(REGIONS))
    return [
        pd.DataFrame(
            {
                "student": np.where(student[draw], "Yes", "No"),
                "balance": balance[draw].round(2),
                "income": income[draw].clip(0).round(2),
                "region": region,
            }
        )
        for draw in range(draws)
    ]


def runs(seed: int, draws: int, segment: str, student_balance: float = 1.0) -> list[DriftReport]:
    """Each draw's report with the default settings: reference 5,000 rows, current 1,000."""
    rng = np.random.default_rng(seed)
    references = credit_tables(rng, draws, 5000)
    currents = credit_tables(rng, draws, 1000, student_balance)
    return [
        compare_tables(reference, current, segment=segment)
        for reference, current in zip(references, currents, strict=True)
    ]


def with_rule(report: DriftReport, **settings: object) -> DriftReport:
    """The same column verdicts under other dataset rules (no statistic is recomputed)."""
    return dataclasses.replace(report, settings=dataclasses.replace(report.settings, **settings))


def test_same_distribution_runs_raise_at_most_5_percent_false_alarms() -> None:
    reports = runs(seed=101, draws=500, segment="region")
    assert all(report.tests == 18 for report in reports)  # 3 columns, overall and 5 regions
    false_alarms = sum(report.dataset_drifted for report in reports)
    assert false_alarms <= 25, f"{false_alarms} of 500 same-distribution runs drifted"
    # Not because nothing moves: without the noise test, columns pass their thresholds in
    # regions of 200 rows in most runs (what Evidently's verdicts would flag).
    past_threshold = sum(any(r.passes_threshold for r in report.columns) for report in reports)
    assert past_threshold >= 250
    # And the old default (Evidently's verdicts, half of the columns) flagged a third or more.
    old_default = sum(
        sum(any(r.passes_threshold for r in report.columns if r.column == name) for name in names)
        >= len(names) / 2
        for report in reports
        for names in [[r.column for r in report.overall]]
    )
    assert old_default >= 150
    # Nor because the importance rule is lax: any drifted column drifts a 3-column dataset.
    assert all(report.dataset_drifted == bool(report.drifted_columns) for report in reports)


def test_a_shift_of_one_important_column_in_one_segment_drifts_the_dataset() -> None:
    reports = runs(seed=202, draws=200, segment="student", student_balance=1.6)
    flagged = [report for report in reports if report.dataset_drifted]
    assert len(flagged) >= 190, f"{len(flagged)} of 200 shifted runs drifted"
    for report in flagged:
        assert "Yes" in report.drifted_in("balance")
        sentence = describe(report)
        assert "balance (importance 33%;" in sentence and "in student=Yes" in sentence
        # No importance recorded: every column weighs the same, and any drifted one decides.
        assert "decided by importance: balance drifted, and without the model's importance" in (
            sentence
        )
        (why,) = [line for line in report.reasons if line.startswith("balance (importance")]
        assert "in student=Yes: PSI " in why and "beyond noise for " in why
    # Evidently's share-of-columns rule misses it: one of three columns moved (33% < 50%).
    by_share = sum(with_rule(report, rule="share").dataset_drifted for report in reports)
    assert by_share <= 10, f"the share rule flagged {by_share} of 200 shifted runs"
    assert all(with_rule(report, rule="share").drifted_share < 0.5 for report in flagged[:20])


def test_conveyor_drift_exits_3_naming_balance_in_students(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(303)
    (reference,) = credit_tables(rng, 1, 5000)
    (current,) = credit_tables(rng, 1, 1000, student_balance=1.6)
    reference.to_parquet(tmp_path / "reference.parquet")
    current.to_csv(tmp_path / "current.csv", index=False)
    command = [
        "drift", "--reference", str(tmp_path / "reference.parquet"),
        "--current", str(tmp_path / "current.csv"), "--segment", "student",
    ]  # fmt: skip
    assert main(command) == 3
    lines = capsys.readouterr().out.strip().splitlines()
    (balance,) = [line for line in lines if line.split()[:2] == ["balance", "Yes"]]
    assert balance.split()[2] == "33%" and balance.endswith("DRIFT")
    assert lines[-1].startswith("Drift: 1 of 3 columns drifted (33%): balance (importance 33%;")
    assert "in student=Yes" in lines[-1]
    # The incident: the plain share of columns says no drift.
    assert main([*command, "--rule", "share"]) == 0
    assert "No dataset drift: 1 of 3" in capsys.readouterr().out
    # Weighed by a champion that hardly uses balance, its drift alone does not decide.
    importance = tmp_path / "importance.json"
    importance.write_text(
        json.dumps({"method": "permutation", "shares": {"balance": 0.02, "income": 0.9}})
    )
    assert main([*command, "--importance", str(importance)]) == 0
    out = capsys.readouterr().out
    assert "balance (importance 2%; overall, in student=Yes)" in out
    assert "not in the importance, weighing 0: region" in out


def shifted_columns(columns: int, shifted: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``columns`` normal columns; the first ``shifted`` move by one standard deviation."""
    rng = np.random.default_rng(seed)
    names = [f"x{index:02d}" for index in range(columns)]
    reference = pd.DataFrame(rng.normal(0, 1, (2000, columns)), columns=names)
    moved = (np.arange(columns) < shifted).astype(float)
    current = pd.DataFrame(rng.normal(0, 1, (2000, columns)) + moved, columns=names)
    return reference, current


@pytest.mark.parametrize(("shifted", "drifted"), [(2, False), (4, True)])
def test_many_light_columns_drift_the_dataset_together(shifted: int, drifted: bool) -> None:
    reference, current = shifted_columns(12, shifted, seed=404)
    equal = dict.fromkeys(reference.columns, 1 / 12)  # recorded: all matter alike
    report = compare_tables(reference, current, DriftSettings(importance=equal))
    assert len(report.drifted_columns) == shifted and not report.deciding_columns
    assert report.weighted_drifted_share == pytest.approx(shifted / 12)  # 8% each, below 10%
    assert report.dataset_drifted is drifted
    together = "the drifted columns weigh 33% together, at least the 30%"
    assert (together in describe(report)) is drifted


def test_without_importance_any_drifted_column_drifts_the_dataset() -> None:
    # An older champion records no importance: a wide table is not judged by the share
    # rule in disguise (2 of 12 columns weighing 8 % each would otherwise pass unseen).
    report = compare_tables(*shifted_columns(12, 2, seed=404))
    assert report.deciding_columns == ["x00", "x01"] and report.dataset_drifted
    assert "without the model's importance every drifted column" in describe(report)


def test_importance_shares_are_renormalised_over_the_tested_columns() -> None:
    reference, current = shifted_columns(4, 1, seed=505)
    # x00 (shifted) 0.05, x01 0.45, x02 0.05, x03 unnamed; "segment" is not tested.
    shares = {"x00": 0.05, "x01": 0.45, "x02": 0.05, "segment": 0.45}
    report = compare_tables(reference, current, DriftSettings(importance=shares))
    assert report.importance == pytest.approx(
        {"x00": 1 / 11, "x01": 9 / 11, "x02": 1 / 11, "x03": 0}
    )
    assert report.drifted_columns == ["x00"] and not report.dataset_drifted  # 9% < 10%
    heavier = with_rule(report, importance={"x00": 0.2, "x01": 0.8})
    assert heavier.deciding_columns == ["x00"] and heavier.dataset_drifted
    # Shares naming none of the tested columns weigh them all the same.
    elsewhere = with_rule(report, importance={"segment": 1.0})
    assert elsewhere.importance == pytest.approx(dict.fromkeys(["x00", "x01", "x02", "x03"], 0.25))
    assert "gives none of the tested columns a share" in elsewhere.reasons[-2]
    summary = report.to_dict()
    assert summary["importance"]["x01"] == pytest.approx(9 / 11)
    assert summary["columns"][0]["importance"] == pytest.approx(1 / 11)
    assert summary["weighted_drifted_share"] == pytest.approx(1 / 11)
    assert summary["rule"] == "importance" and summary["reasons"] == report.reasons


def test_importance_files_are_read_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "importance.json").write_text(
        json.dumps({"method": "permutation", "importances": {"a": 0.3}, "shares": {"a": 1.0}})
    )
    assert load_importance(folder) == {"a": 1.0}
    assert load_importance(folder / "importance.json") == {"a": 1.0}
    (tmp_path / "plain.json").write_text('{"a": 0.25, "b": 0.75}')
    assert load_importance(tmp_path / "plain.json") == {"a": 0.25, "b": 0.75}
    for name, content, message in [
        ("negative.json", '{"shares": {"a": -0.1}}', "'a': -0.1, expected a column name and"),
        ("text.json", '{"shares": {"a": "high"}}', "'a': 'high', expected"),
        ("list.json", '{"shares": [1, 2]}', "expected a mapping of column to share"),
        ("broken.json", "{not json", "broken.json: not JSON: Expecting property name"),
    ]:
        (tmp_path / name).write_text(content)
        with pytest.raises(ConveyorError, match=message) as raised:
            load_importance(tmp_path / name)
        assert len(str(raised.value).splitlines()) == 1
    with pytest.raises(ConveyorError, match="missing.json: .*No such file"):
        load_importance(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rule": "majority"}, "drift rule 'majority': expected one of"),
        ({"alpha": 0}, "drift alpha 0: expected a number in"),
        ({"alpha": 1.0}, "drift alpha 1.0: expected a number in"),
        ({"alpha": True}, "drift alpha True: expected"),
        ({"importance_threshold": 0}, "importance_threshold 0 must be a number in"),
        ({"weighted_share": 1.5}, "weighted_share 1.5 must be a number in"),
        ({"importance": {"a": float("nan")}}, "drift importance: 'a': nan"),
    ],
)
def test_bad_verdict_settings_are_one_line(settings: dict, message: str) -> None:
    with pytest.raises(ConveyorError, match=message):
        DriftSettings(**settings)


def test_the_drift_component_weighs_columns_by_the_importance_artifact(tmp_path: Path) -> None:
    rng = np.random.default_rng(606)
    reference, current = (
        artifact(Dataset, tmp_path, "reference"),
        artifact(Dataset, tmp_path, "current"),
    )
    (reference_table,) = credit_tables(rng, 1, 5000)
    (current_table,) = credit_tables(rng, 1, 1000, student_balance=1.6)
    reference_table.to_parquet(reference.path)
    current_table.to_parquet(current.path)
    importance = artifact(Artifact, tmp_path, "importance")
    Path(importance.path).mkdir(parents=True)  # the model directory's layout
    (Path(importance.path) / "importance.json").write_text(
        json.dumps({"shares": {"balance": 0.7, "income": 0.2, "student": 0.1}})
    )
    metrics, report = artifact(Metrics, tmp_path, "metrics"), artifact(Markdown, tmp_path, "report")
    html, summary = artifact(HTML, tmp_path, "html"), artifact(Artifact, tmp_path, "summary")
    drifted = drift.python_func(
        reference=reference, current=current, metrics=metrics, report=report,
        html_report=html, summary=summary, segment_column="student", importance=importance,
        report_sample_rows=2000,
    )  # fmt: skip
    written = json.loads(Path(summary.path).read_text())
    assert drifted is True and written["dataset_drifted"] is True
    assert written["importance"] == pytest.approx({"balance": 7 / 9, "income": 2 / 9, "region": 0})
    assert written["drifted_columns"] == {"balance": ["all", "Yes"]}
    assert written["reasons"][0].startswith("Drift by importance: balance (78%) drifted")
    assert metrics.metadata["weighted_drifted_share"] == pytest.approx(7 / 9)
    text = Path(report.path).read_text()
    assert "| balance | Yes | 77.8% | numeric |" in text
    assert "- balance (importance 78%) drifted overall: PSI " in text
    assert "in student=Yes: PSI " in text
