"""Drift: Conveyor's statistics against Evidently's DataDriftPreset on the same tables, per
segment, bad input, the ``conveyor drift`` command and the drift component."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics

from components.core.drift import DriftSettings, compare_tables
from components.core.errors import ConveyorError
from components.drift import drift
from pipelines.cli import main
from tests.conftest import artifact

P_VALUES = {"ks", "chisquare"}


def transactions(rows: int, seed: int, shift: float = 0.0, vip_share: float = 0.05) -> pd.DataFrame:
    """Card transactions: a skewed amount, a steady age, a 1-5 rating code, a segment."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(["retail", "business", "vip"], rows, p=[0.95 - vip_share, 0.05, vip_share])
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.0 + shift, 1.0, rows),
            "age": rng.normal(40, 10, rows),
            "rating": rng.integers(1, 6, rows),
            "segment": segment,
            "channel": rng.choice(
                ["web", "pos", "atm"], rows, p=[0.5 + shift / 2, 0.4 - shift / 2, 0.1]
            ),
        }
    )


def evidently_scores(reference, current, numeric: str, categorical: str, thresholds) -> dict:
    """Column -> (score, drifted) from Evidently's DataDriftPreset, run on its own."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    preset = DataDriftPreset(
        num_method=numeric, cat_method=categorical,
        num_threshold=thresholds[numeric], cat_threshold=thresholds[categorical],
    )  # fmt: skip
    snapshot = Report([preset]).run(current_data=current, reference_data=reference).dict()
    found = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if "column" in config:
            method, value, limit = config["method"], float(metric["value"]), config["threshold"]
            found[config["column"]] = (
                value,
                value < limit if method in P_VALUES else value >= limit,
            )
    return found


@pytest.mark.parametrize(
    ("numeric", "categorical", "thresholds"),
    [
        ("psi", "jensenshannon", {"psi": 0.1, "jensenshannon": 0.1}),
        ("ks", "chisquare", {"ks": 0.05, "chisquare": 0.05}),
        ("jensenshannon", "psi", {"jensenshannon": 0.05, "psi": 0.02}),
    ],
)
@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_verdicts_and_scores_match_evidently(numeric, categorical, thresholds, shift) -> None:
    reference = transactions(4000, seed=1)
    current = transactions(3000, seed=2, shift=shift, vip_share=0.05 + shift / 2)
    settings = DriftSettings(thresholds, numeric, categorical)
    ours = {r.column: r for r in compare_tables(reference, current, settings).overall}
    theirs = evidently_scores(reference, current, numeric, categorical, thresholds)
    assert set(ours) == set(theirs)
    for column, (score, drifted) in theirs.items():
        assert ours[column].score == pytest.approx(score, rel=1e-6, abs=1e-12), column
        assert ours[column].drifted is drifted, column
    if shift:  # the case is not trivial: a shifted table drifts somewhere, an unshifted one not
        assert any(result.drifted for result in ours.values())


def test_a_shift_within_one_segment_is_drift_even_when_the_table_hardly_moves() -> None:
    reference = transactions(20000, seed=3)
    current = transactions(20000, seed=4)
    vip = current["segment"] == "vip"
    current.loc[vip, "amount"] *= 2.5  # the average vip transaction more than doubles
    report = compare_tables(reference, current, segment="segment")
    amount = {r.segment: r for r in report.columns if r.column == "amount"}
    assert not amount[None].drifted and amount["vip"].drifted
    assert not amount["retail"].drifted
    assert report.drifted_in("amount") == ["vip"]
    assert report.drifted_columns == ["amount"] and report.drifted_share == pytest.approx(0.25)
    settings = DriftSettings(drift_share=0.25)
    assert compare_tables(reference, current, settings, segment="segment").dataset_drifted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.rename(columns={"age": "age_years"}),
         "different columns: only in reference ['age'], only in current ['age_years']"),
        (lambda t: t.assign(amount=t["amount"].astype(str).where(t.index > 5, "n/a")),
         "column 'amount': numeric in the reference, object in the current table"),
        (lambda t: t.assign(age=t["age"].where(t.index > 0, np.inf)),
         "column 'age': holds infinities in the current table"),
        (lambda t: pd.concat([t, t[["age"]]], axis=1),
         "current table: duplicated column name(s) ['age']"),
        (lambda t: t.assign(channel=np.nan), "column 'channel': no values to compare in the current table"),
    ],
)  # fmt: skip
def test_tables_that_cannot_be_compared_are_one_line(change, message) -> None:
    reference = transactions(500, seed=5)
    with pytest.raises(ConveyorError, match=re.escape(message)):
        compare_tables(reference, change(transactions(500, seed=6)))


def test_unknown_tests_and_thresholds_are_refused() -> None:
    with pytest.raises(ConveyorError, match=r"unknown test\(s\) \['wasserstein'\]"):
        DriftSettings({"wasserstein": 0.1})
    with pytest.raises(ConveyorError, match="ks cannot decide categorical columns"):
        DriftSettings(categorical_test="ks")


def test_conveyor_drift_exits_3_on_drift_and_0_without(tmp_path: Path, capsys) -> None:
    transactions(3000, seed=7).to_parquet(tmp_path / "reference.parquet")
    transactions(3000, seed=8).to_csv(tmp_path / "same.csv", index=False)
    transactions(3000, seed=9, shift=0.6, vip_share=0.4).to_csv(
        tmp_path / "shifted.csv", index=False
    )
    reference = str(tmp_path / "reference.parquet")
    assert main(["drift", "--reference", reference, "--current", str(tmp_path / "same.csv")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("No dataset drift: 0 of 5")
    report = tmp_path / "out" / "drift.html"
    code = main([
        "drift", "--reference", reference, "--current", str(tmp_path / "shifted.csv"),
        "--report", str(report), "--sample-rows", "1000", "--threshold", "psi=0.12",
        "--drift-share", "0.4",
    ])  # fmt: skip
    assert code == 3
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("Drift: ") and "amount" in lines[-2]
    assert lines[0].split()[:3] == ["column", "segment", "kind"]
    html = report.read_text()  # Evidently's page, with the column's PSI panel and its counts
    assert (
        "<html" in html and "Drifted Columns" in html and 'PSI", "reference_distribution"' in html
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"amount,age\n1,\xff\n", "not UTF-8 text (byte 0xff"),
        (b"PAR1\x00\x01broken", "not a readable Parquet file"),
    ],
)
def test_unreadable_tables_are_one_line_and_write_no_report(
    tmp_path: Path, capsys, content: bytes, message: str
) -> None:
    transactions(100, seed=10).to_parquet(tmp_path / "reference.parquet")
    (tmp_path / "current.csv").write_bytes(content)
    code = main([
        "drift", "--reference", str(tmp_path / "reference.parquet"),
        "--current", str(tmp_path / "current.csv"), "--report", str(tmp_path / "r.html"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_the_drift_component_writes_metrics_and_readable_reports(tmp_path: Path) -> None:
    reference, current = (
        artifact(Dataset, tmp_path, "reference"),
        artifact(Dataset, tmp_path, "current"),
    )
    transactions(60000, seed=11).to_parquet(reference.path)
    transactions(60000, seed=12, shift=0.5, vip_share=0.3).to_parquet(current.path)
    metrics, report = artifact(Metrics, tmp_path, "metrics"), artifact(Markdown, tmp_path, "report")
    html, summary = artifact(HTML, tmp_path, "html"), artifact(Artifact, tmp_path, "summary")
    drifted = drift.python_func(
        reference=reference, current=current, metrics=metrics, report=report,
        html_report=html, summary=summary, segment_column="segment",
        exclude_columns=["rating"], report_sample_rows=5000,
    )  # fmt: skip
    written = json.loads(Path(summary.path).read_text())
    assert drifted is True and written["dataset_drifted"] is True
    assert set(written["drifted_columns"]) == {"amount", "channel"}
    assert metrics.metadata["drifted_columns"] == 2
    assert metrics.metadata["channel.jensenshannon"] >= 0.1 and metrics.metadata["age.psi"] < 0.1
    assert "amount.psi" in metrics.metadata and written["drifted_columns"]["amount"]
    text = Path(report.path).read_text()
    assert text.startswith("# Data drift") and "**Drift: 2 of 3 columns drifted" in text
    assert "seeded sample of 5,000 rows per table" in text and "| rating |" not in text
    assert Path(html.path).stat().st_size > 10_000
