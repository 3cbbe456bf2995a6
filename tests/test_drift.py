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

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.drift import DriftSettings, compare_tables
from conveyor.components.drift import drift
from conveyor.pipelines.cli import main
from tests.conftest import artifact, transactions

# Evidently's own rules: KS drifts at or below its threshold, chi-squared below it.
EVIDENTLY_DRIFTS = {
    "psi": lambda value, limit: value >= limit,
    "jensenshannon": lambda value, limit: value >= limit,
    "ks": lambda value, limit: value <= limit,
    "chisquare": lambda value, limit: value < limit,
}


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
            found[config["column"]] = (value, EVIDENTLY_DRIFTS[method](value, limit))
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
    theirs = evidently_scores(reference, current, numeric, categorical, thresholds)
    # Without the noise test a column's verdict is Evidently's; with it (the default), a
    # column drifts where Evidently's verdict is drift and the counts differ beyond noise.
    for alpha in (None, 0.01):
        settings = DriftSettings(thresholds, numeric, categorical, alpha=alpha)
        ours = {r.column: r for r in compare_tables(reference, current, settings).overall}
        assert set(ours) == set(theirs)
        for column, (score, drifted) in theirs.items():
            assert ours[column].score == pytest.approx(score, rel=1e-6, abs=1e-12), column
            assert ours[column].passes_threshold is drifted, column
            assert ours[column].drifted is (
                drifted and (alpha is None or ours[column].beyond_noise)
            )
    # The cases are not trivial: a shifted table drifts somewhere, an unshifted one nowhere.
    # Unshifted, rating's chi-squared p-value is 0.04: Evidently's false alarm, within noise.
    assert any(result.drifted for result in ours.values()) is bool(shift)
    if numeric == "ks" and not shift:
        assert ours["rating"].passes_threshold and not ours["rating"].drifted


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
    assert report.dataset_drifted  # amount weighs 25% of 4 equal columns, above 10%
    # The share rule needs a quarter of the columns to drift at once.
    for share, drifted in ((0.5, False), (0.25, True)):
        settings = DriftSettings(drift_share=share, rule="share")
        assert compare_tables(reference, current, settings, "segment").dataset_drifted is drifted


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
    for value in ("0.1", float("nan"), -1.0, True):
        with pytest.raises(ConveyorError, match="expected a number above 0"):
            DriftSettings({"psi": value})
    with pytest.raises(ConveyorError, match="'ks' cannot decide categorical columns"):
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
        "--rule", "share", "--drift-share", "0.4",
    ])  # fmt: skip
    assert code == 3
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("Drift: ") and "amount" in lines[-2]
    assert "decided by the share rule" in lines[-2]
    assert lines[0].split()[:4] == ["column", "segment", "importance", "kind"]
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
    body = Path(html.path).read_text().split("<body>", 1)[1].lstrip()  # the page's first line
    assert body.startswith("<p ") and "seeded sample of 5,000 rows per table" in body[:400]


def test_large_samples_get_scipys_asymptotic_ks() -> None:
    from scipy import stats

    from conveyor.components.core.monitoring.drift import _ks_distance, _ks_p_value

    rng = np.random.default_rng(13)
    cases = [
        (rng.normal(0, 1, 30000), rng.normal(0.01, 1, 25000)),  # p around 0.2
        (rng.integers(0, 60, 40000).astype(float), rng.integers(0, 61, 30000).astype(float)),
    ]
    for reference, current in cases:
        reference.sort(), current.sort()
        expected = stats.ks_2samp(reference, current, method="asymp")
        assert _ks_distance(reference, current) == pytest.approx(expected.statistic, abs=1e-15)
        assert _ks_p_value(reference, current) == pytest.approx(expected.pvalue, rel=1e-9)


def test_codes_read_as_floats_because_of_a_gap_are_still_the_same_categories() -> None:
    reference = transactions(5000, seed=14)
    current = transactions(5000, seed=15)
    current["rating"] = current["rating"].where(current.index % 50 != 0)  # now float, with NaN
    report = compare_tables(reference, current)
    (rating,) = [r for r in report.overall if r.column == "rating"]
    assert rating.kind == "categorical" and not rating.drifted
    assert rating.current_nulls == pytest.approx(0.02) and rating.reference_nulls == 0


def test_times_and_identifiers_are_listed_not_tested() -> None:
    reference, current = transactions(2000, seed=16), transactions(2000, seed=17)
    for table, start in ((reference, "2026-01-01"), (current, "2026-06-01")):
        table["seen_at"] = pd.date_range(start, periods=len(table), freq="min")
        table["transaction_id"] = [f"t{start}-{index}" for index in range(len(table))]
    report = compare_tables(reference, current)
    assert {r.column for r in report.overall} == {"amount", "age", "rating", "segment", "channel"}
    assert report.skipped == [
        "seen_at: a date or time, not tested for drift (it moves on by nature)",
        "transaction_id: an identifier: never a feature; checked unique, passed to the payload log",
    ]


def test_segments_too_small_new_or_missing_are_listed_not_tested() -> None:
    reference = transactions(4000, seed=18, vip_share=0.02)
    current = transactions(4000, seed=19, vip_share=0.02)
    current.loc[:9, "segment"] = "crypto"  # a segment the reference never had
    current.loc[10:14, "segment"] = np.nan
    current.loc[current["segment"] == "business", "channel"] = np.nan
    report = compare_tables(reference, current, DriftSettings(min_segment_rows=150), "segment")
    assert {r.segment for r in report.columns} == {None, "retail", "business"}
    business = [r.column for r in report.columns if r.segment == "business"]
    assert "channel" not in business and "amount" in business
    assert report.skipped == [
        "segment: 5 current rows have no segment",
        "channel in segment=business: no values on one side",
        "segment=crypto: new in the current table (10 rows)",
        f"segment=vip: {min((reference.segment == 'vip').sum(), (current.segment == 'vip').sum())} rows, below the 150 a segment needs",
    ]


def test_comparing_leaves_the_warnings_filter_as_it_was() -> None:
    import warnings

    before = list(warnings.filters)
    compare_tables(transactions(300, seed=20), transactions(300, seed=21, shift=0.6))
    assert warnings.filters == before


def test_tables_that_cannot_be_compared_fail_the_command_and_write_nothing(
    tmp_path: Path, capsys
) -> None:
    transactions(200, seed=22).to_parquet(tmp_path / "reference.parquet")
    transactions(200, seed=23).rename(columns={"age": "age_years"}).to_csv(
        tmp_path / "current.csv", index=False
    )
    code = main([
        "drift", "--reference", str(tmp_path / "reference.parquet"),
        "--current", str(tmp_path / "current.csv"), "--report", str(tmp_path / "r.html"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("conveyor drift: reference and current tables have")
    assert not (tmp_path / "r.html").exists()


def test_an_excluded_column_may_be_in_the_reference_only() -> None:
    reference = transactions(500, seed=5).assign(label=1)  # training data has the label
    current = transactions(500, seed=6)  # inference inputs do not
    report = compare_tables(reference, current, exclude=("label",))
    assert "label" not in {result.column for result in report.columns}
    with pytest.raises(ConveyorError, match=r"only in reference \['label'\]"):
        compare_tables(reference, current)
    with pytest.raises(ConveyorError, match="excluded column 'labels' is not in the tables"):
        compare_tables(reference, current, exclude=("label", "labels"))


# Only scipy's statistic is compared; its asymptotic p-value of a one-value sample divides by 0.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_the_ks_distance_is_exact_on_seeded_samples_large_and_small_with_ties() -> None:
    from scipy import stats

    from conveyor.components.core.monitoring.drift import _ks_distance

    rng = np.random.default_rng(23)
    shapes = [
        lambda size, move: rng.normal(move, 1, size),
        lambda size, move: rng.integers(0, 5 + int(move * 20), size).astype(float),
        lambda size, move: np.round(rng.normal(move, 1, size), 2),
        lambda size, move: np.where(rng.random(size) < 0.4, 0.0, rng.exponential(1 + move, size)),
    ]
    for case in range(120):
        draw = shapes[case % len(shapes)]
        sizes = rng.integers(1, 40, 2) if case % 5 == 0 else rng.integers(5_000, 40_000, 2)
        reference = np.sort(draw(int(sizes[0]), 0.0))
        current = np.sort(draw(int(sizes[1]), rng.uniform(0, 0.05)))
        expected = stats.ks_2samp(reference, current, method="asymp").statistic
        assert _ks_distance(reference, current) == pytest.approx(expected, abs=1e-15), case


def test_reference_counts_taken_while_deciding_roles_give_the_same_report() -> None:
    from conveyor.components.core.monitoring.drift import reference_roles
    from tests.test_drift_summary import messy_table

    rng = np.random.default_rng(31)
    reference, current = messy_table(rng, 6000, 0.0), messy_table(rng, 5000, 0.3)
    current.loc[:40, "region"] = "new-region"
    reference.loc[:30, "notes"] = np.nan  # NaN and None alike are missing
    roles = reference_roles(reference, ())
    decided = compare_tables(reference, current, segment="region")
    given = compare_tables(reference, current, segment="region", roles=roles)
    assert decided.to_dict() == given.to_dict()
    (notes,) = [r for r in decided.overall if r.column == "notes"]
    assert notes.kind == "categorical" and notes.reference_nulls > 0.3
