"""Online quality: labels joined to payload log rows (written as the contract lays them out),
metrics matched with scikit-learn's, intervals checked by seeded simulations, the fraud
incident flagged in its segment, bad input refused in one line, and the champion's offline
metrics read from a real MLflow server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.intervals import wilson_interval
from conveyor.components.core.monitoring.quality import (
    QualitySettings,
    assess_quality,
    champion_scores,
    delong_auc,
    read_offline,
)
from conveyor.components.core.training.importance import LABEL_COLUMN
from conveyor.pipelines.cli import main
from tests.conftest import artifact

START = pd.Timestamp("2026-11-20", tz="UTC")


def log_rows(
    scores: np.ndarray,
    classes: list[str],
    rng: np.random.Generator,
    model: str = "fraud",
    days: int = 7,
    features: dict[str, np.ndarray] | pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Payload log rows of a model: its inputs, then the contract's ``conveyor.`` columns.
    ``scores`` is the positive class's probability (binary) or a (rows, classes) matrix."""
    rows = len(scores)
    proba = np.column_stack([1 - scores, scores]) if scores.ndim == 1 else scores
    ids = [f"req-{index:06d}" for index in range(rows)]
    inputs = {"x": rng.normal(size=rows)} if features is None else features
    table = pd.DataFrame(inputs).reset_index(drop=True)
    table["conveyor.id"] = ids
    table["conveyor.request_id"] = ids
    seconds = np.sort(rng.uniform(0, days * 86_400, rows))
    table["conveyor.time"] = START + pd.to_timedelta(seconds, unit="s")
    table["conveyor.revision"] = rng.choice(["fraud-00001", "fraud-00002"], rows)
    table["conveyor.model"] = model
    table["conveyor.model_sha256"] = "0" * 64
    table["conveyor.prediction"] = np.asarray(classes)[proba.argmax(axis=1)]
    table["conveyor.score"] = scores if scores.ndim == 1 else proba.max(axis=1)
    for index, name in enumerate(classes):
        table[f"conveyor.probability.{name}"] = proba[:, index]
    return table


def write_log(root: Path, table: pd.DataFrame) -> Path:
    """The rows as the payload log writes them: a file per day folder."""
    days = table["conveyor.time"].dt.strftime("%Y-%m-%d")
    for day, part in table.groupby(days):
        (root / day).mkdir(parents=True, exist_ok=True)
        part.to_parquet(root / day / "fraud-00001-120000000000-0a1b2c3d.parquet", index=False)
    return root


def binary_case(tmp_path: Path, rows: int = 4000, labelled: int = 2500, seed: int = 3):
    """A log whose scores predict labels moderately, with ties, and labels for some rows."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.beta(2, 3, rows), 2)  # rounded: ties exercise the midranks
    truth = (rng.uniform(size=rows) < scores).astype(int)
    features = {"x": rng.normal(size=rows), "segment": rng.choice(["a", "b", "c"], rows)}
    table = log_rows(scores, ["0", "1"], rng, features=features)
    chosen = np.sort(rng.choice(rows, labelled, replace=False))
    labels = pd.DataFrame(
        {
            "id": table["conveyor.id"].to_numpy()[chosen],
            "label": truth[chosen],
            "time": table["conveyor.time"].iloc[chosen].to_numpy() + pd.Timedelta(days=1),
        }
    )
    write_log(tmp_path / "log", table)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    joined = table.iloc[chosen].assign(label=truth[chosen])
    return tmp_path / "log", tmp_path / "labels.csv", joined


def sklearn_binary(rows: pd.DataFrame) -> dict[str, float]:
    truth, predicted = rows["label"].astype(str), rows["conveyor.prediction"]
    tn, fp, fn, tp = skm.confusion_matrix(truth, predicted, labels=["0", "1"]).ravel()
    shared = {"pos_label": "1", "zero_division": 0}
    return {
        "accuracy": skm.accuracy_score(truth, predicted),
        "precision": skm.precision_score(truth, predicted, **shared),
        "recall": skm.recall_score(truth, predicted, **shared),
        "false_positive_rate": fp / (fp + tn),
        "f1": skm.f1_score(truth, predicted, **shared),
        "roc_auc": skm.roc_auc_score(truth == "1", rows["conveyor.score"]),
        "log_loss": skm.log_loss(truth, rows["conveyor.score"], labels=["0", "1"]),
    }


def test_metrics_match_scikit_learns_on_the_joined_rows(tmp_path: Path) -> None:
    log, labels, joined = binary_case(tmp_path)
    settings = QualitySettings(segment="segment", days=0)
    report = assess_quality(str(log), str(labels), "fraud", {}, settings)
    assert report.positive_class == "1" and report.coverage.labelled_rows == len(joined)
    groups = {(g.dimension, g.group): g for g in report.groups}
    subsets = {("overall", "all"): joined}
    subsets |= {("segment", s): part for s, part in joined.groupby("segment")}
    subsets |= {("revision", r): part for r, part in joined.groupby("conveyor.revision")}
    days = joined["conveyor.time"].dt.strftime("%Y-%m-%d")
    subsets |= {("day", d): part for d, part in joined.groupby(days)}
    assert set(groups) == set(subsets)
    for key, rows in subsets.items():
        expected = sklearn_binary(rows)
        found = {name: interval.value for name, interval in groups[key].metrics.items()}
        assert found == pytest.approx(expected, rel=1e-12, abs=1e-12), key
        for interval in groups[key].metrics.values():
            assert interval.lower <= interval.value <= interval.upper


def test_multiclass_gets_accuracy_log_loss_and_macro_averages_like_scikit_learn(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    classes = ["setosa", "versicolor", "virginica"]
    proba = rng.dirichlet([2, 2, 2], 3000)
    truth = np.array([rng.choice(3, p=p) for p in proba])
    table = log_rows(proba, classes, rng)
    write_log(tmp_path / "log", table)
    pd.DataFrame({"id": table["conveyor.id"], "label": np.asarray(classes)[truth]}).to_parquet(
        tmp_path / "labels.parquet"
    )
    report = assess_quality(
        str(tmp_path / "log"), str(tmp_path / "labels.parquet"), "fraud", {}, QualitySettings()
    )
    overall = {name: i.value for name, i in report.overall().metrics.items()}
    labels, predicted = np.asarray(classes)[truth], table["conveyor.prediction"]
    expected = {
        "accuracy": skm.accuracy_score(labels, predicted),
        "precision": skm.precision_score(labels, predicted, average="macro"),
        "recall": skm.recall_score(labels, predicted, average="macro"),
        "f1": skm.f1_score(labels, predicted, average="macro"),
        "log_loss": skm.log_loss(labels, proba, labels=classes),
    }
    assert overall == pytest.approx(expected, rel=1e-12)
    assert report.positive_class is None and "macro averages" in report.notes[0]


def test_wilson_and_f1_intervals_cover_the_true_value_at_their_level() -> None:
    """2,000 seeded draws: the 95 % Wilson interval of a 10 % rate on 150 rows covers it in
    at least 93 % of them, and the delta-method F1 interval on 400 rows in at least 92 %
    (the binomial spread of 2,000 draws at 95 % is ±1 %)."""
    rng = np.random.default_rng(0)
    draws, z = 2000, 1.959964
    hits = rng.binomial(150, 0.1, draws)
    lower, upper = wilson_interval(hits, np.full(draws, 150), z)
    assert np.mean((lower <= 0.1) & (upper >= 0.1)) >= 0.93
    cells = np.array([0.15, 0.05, 0.08, 0.72])  # TP, FP, FN, TN
    true_f1 = 2 * cells[0] / (2 * cells[0] + cells[1] + cells[2])
    from conveyor.components.core.monitoring.quality import group_quality

    counts = rng.multinomial(400, cells, draws)
    truth = np.concatenate([np.repeat([1, 0, 1, 0], row) for row in counts])
    predicted = np.concatenate([np.repeat([1, 1, 0, 0], row) for row in counts])
    codes = np.repeat(np.arange(draws), 400)
    found = group_quality(
        codes, draws, truth, predicted, 2, 1, np.full(truth.size, np.nan), None, z
    )
    value, low, high, _ = found["f1"]
    assert np.mean((low <= true_f1) & (true_f1 <= high)) >= 0.92
    assert np.mean(value) == pytest.approx(true_f1, abs=0.01)


def test_delongs_variance_matches_the_spread_of_auc_over_seeded_draws() -> None:
    """2,000 draws of 150 positives and 350 negatives at once, one group each: the mean
    DeLong variance is within 15 % of the variance of the AUCs, and each AUC is
    scikit-learn's (ties included)."""
    rng = np.random.default_rng(1)
    draws, positives, negatives = 2000, 150, 350
    size = positives + negatives
    label = np.tile(np.r_[np.ones(positives), np.zeros(negatives)], draws).astype(bool)
    score = np.round(rng.normal(label * 0.8, 1.0), 1)
    codes = np.repeat(np.arange(draws), size)
    auc, variance = delong_auc(score, label, codes, draws)
    assert np.mean(variance) == pytest.approx(np.var(auc, ddof=1), rel=0.15)
    for draw in (0, 1, 1999):
        part = slice(draw * size, (draw + 1) * size)
        assert auc[draw] == pytest.approx(skm.roc_auc_score(label[part], score[part]), abs=1e-12)


BASE_RATES = {"a": -0.5, "b": -1.5, "c": -2.5}  # each segment's log-odds at x = 0


def segmented(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, ...]:
    """Rows of three segments whose base rates differ (about 40 %, 21 % and 9 % positive),
    scored by the true model: segment, positive-class probability, label."""
    segment = rng.choice(list(BASE_RATES), rows, p=[0.3, 0.3, 0.4])
    base = np.array([BASE_RATES[s] for s in segment])
    score = 1 / (1 + np.exp(-(base + 1.5 * rng.normal(size=rows))))
    return segment, score, (rng.uniform(size=rows) < score).astype(int)


def recorded_scores(segment: np.ndarray, score: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """An evaluation split's scores as train records them (``scores.parquet``)."""
    from conveyor.components.core.training.importance import LABEL_COLUMN

    return pd.DataFrame(
        {
            "segment": segment,
            "conveyor.score": score,
            "conveyor.prediction": np.where(score >= 0.5, "1", "0"),
            "conveyor.probability.0": 1 - score,
            "conveyor.probability.1": score,
            LABEL_COLUMN: truth.astype(str),
        }
    )


def test_a_run_of_an_unchanged_model_raises_a_false_alarm_rarely(tmp_path: Path) -> None:
    """200 seeded monitoring runs of an unchanged model on an unchanged population, each
    judging what one run does (overall, 2 revisions, 3 segments whose base rates differ:
    42 metrics) from 3,000 labelled rows against a fresh 1,000-row evaluation split: at
    most 5 % of the runs flag anything (1.5 % here). Judged the old way, the offline values
    exact and every segment against the overall one, each of the first 20 runs alarms."""
    rng = np.random.default_rng(21)
    runs, alarms, old_alarms = 200, 0, 0
    settings = QualitySettings(segment="segment", days=0)
    for run in range(runs):
        reference = recorded_scores(*segmented(rng, 1000))
        segment, score, truth = segmented(rng, 3000)
        table = log_rows(score, ["0", "1"], rng, features={"segment": segment})
        root = tmp_path / f"run-{run:03d}"
        write_log(root / "log", table)
        labels = root / "labels.parquet"
        pd.DataFrame({"id": table["conveyor.id"], "label": truth}).to_parquet(labels)
        report = assess_quality(str(root / "log"), str(labels), "fraud", {}, settings, reference)
        assert [g.group for g in report.offline_groups] == ["all", "a", "b", "c"]
        assert not [n for n in report.notes if "exact" in n]
        alarms += report.degraded
        if run < 20:
            exact = sklearn_binary(reference.rename(columns={"conveyor.label": "label"}))
            old = assess_quality(str(root / "log"), str(labels), "fraud", exact, settings)
            assert any("offline values taken as exact" in n for n in old.notes)
            old_alarms += old.degraded
    assert alarms / runs <= 0.05
    assert old_alarms >= 15


def fraud_table(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Card transactions whose fraud depends on the amount (and age), in three segments."""
    segment = rng.choice(["retail", "business", "student"], rows, p=[0.6, 0.2, 0.2])
    amount = rng.lognormal(3.5, 0.7, rows)
    age = rng.normal(40, 10, rows)
    risk = 1 / (1 + np.exp(-(2.2 * (np.log(amount) - 4.2) - 0.03 * (age - 40))))
    fraud = (rng.uniform(size=rows) < risk).astype(int)
    return pd.DataFrame({"amount": amount, "age": age, "segment": segment, "fraud": fraud})


def test_the_incident_a_segments_amounts_shift_and_its_false_positive_rate_is_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A logistic regression fit on unshifted transactions, its evaluation scores recorded
    as train records them; in production the students' legitimate amounts grow 1.6x (their
    fraud does not change): their false-positive rate rises past the students' own offline
    one, and ``conveyor quality`` flags it, with its interval, and no other segment."""
    from conveyor.components.core.training.importance import evaluation_scores

    rng = np.random.default_rng(17)
    train, test = fraud_table(20_000, rng), fraud_table(10_000, rng)
    features = ["amount", "age"]
    model = LogisticRegression().fit(train[features], train["fraud"])
    reference = evaluation_scores(model, test, "fraud", features, "1")
    reference.to_parquet(tmp_path / "scores.parquet")
    live = fraud_table(30_000, rng)
    student = live["segment"] == "student"
    live.loc[student, "amount"] *= np.where(live.loc[student, "fraud"] == 0, 1.6, 1.0)
    scores = model.predict_proba(live[features])[:, 1]
    table = log_rows(scores, ["0", "1"], rng, features=live[["amount", "age", "segment"]])
    write_log(tmp_path / "log", table)
    labelled = rng.choice(len(live), 20_000, replace=False)
    pd.DataFrame(
        {
            "transaction": table["conveyor.id"].to_numpy()[labelled],
            "chargeback": live["fraud"].to_numpy()[labelled],
        }
    ).to_parquet(tmp_path / "labels.parquet")

    code = main(
        ["quality", "--model", "fraud", "--log", str(tmp_path / "log"),
         "--labels", str(tmp_path / "labels.parquet"), "--id-column", "transaction",
         "--label-column", "chargeback", "--segment", "segment",
         "--reference-scores", str(tmp_path / "scores.parquet"),
         "--report", str(tmp_path / "q.md"), "--html", str(tmp_path / "q.html")]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 3
    assert "DEGRADED false_positive_rate segment student:" in printed
    assert "offline segment student" in printed
    summary = assess_quality(
        str(tmp_path / "log"), str(tmp_path / "labels.parquet"), "fraud", {},
        QualitySettings(id_column="transaction", label_column="chargeback", segment="segment"),
        reference,
    )  # fmt: skip
    flagged = {(d.group, d.metric) for d in summary.degradations if d.dimension == "segment"}
    assert ("student", "false_positive_rate") in flagged
    assert {group for group, _ in flagged} == {"student"}
    fpr = next(
        d for d in summary.degradations
        if d.group == "student" and d.metric == "false_positive_rate"
    )  # fmt: skip
    students = test[test["segment"] == "student"]
    legitimate = students["fraud"] == 0
    predicted = model.predict(students[features])
    offline_fpr = np.mean(predicted[legitimate] == 1)
    assert fpr.offline_group == "student" and fpr.offline == pytest.approx(offline_fpr)
    assert fpr.bound > 0.02 and fpr.offline_interval is not None
    assert "**" in (tmp_path / "q.md").read_text()
    assert "Offline: the champion's evaluation split" in (tmp_path / "q.md").read_text()
    page = (tmp_path / "q.html").read_text()
    assert page.count("<svg") == 7 and "<script" not in page

    # And before any label arrives, drift (its defaults) names the column and the segment.
    train[["amount", "age", "segment"]].to_parquet(tmp_path / "train.parquet")
    live[["amount", "age", "segment"]].to_csv(tmp_path / "live.csv", index=False)
    code = main(
        ["drift", "--reference", str(tmp_path / "train.parquet"),
         "--current", str(tmp_path / "live.csv"), "--segment", "segment"]
    )  # fmt: skip
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 3 and verdict.startswith("Drift: "), verdict
    assert "amount (importance 50%; in segment=student)" in verdict
    assert "age (" not in verdict


def test_coverage_counts_every_row_and_label_that_does_not_reach_the_metrics(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(9)
    table = log_rows(rng.uniform(size=100), ["no", "yes"], rng, days=3)
    again = table.iloc[:5].assign(**{"conveyor.time": table["conveyor.time"].iloc[-1]})
    old = table.iloc[:7][["x"]]  # a file written before predictions were logged
    write_log(tmp_path / "log", pd.concat([table, again], ignore_index=True))
    old.to_parquet(
        tmp_path / "log" / table["conveyor.time"].dt.strftime("%Y-%m-%d").iloc[-1] / "old.parquet"
    )
    labels = pd.DataFrame(
        {
            "id": [*table["conveyor.id"].iloc[:60], "never-logged-1", "never-logged-2"],
            "label": rng.choice(["no", "yes"], 62),
            "time": [*(table["conveyor.time"].iloc[:60] + pd.Timedelta(days=1)), START, START],
        }
    )
    late = table["conveyor.time"].iloc[10:20] + pd.Timedelta(days=7, seconds=1)
    labels.loc[10:19, "time"] = late.to_numpy()
    labels.to_parquet(tmp_path / "labels.parquet")
    report = assess_quality(
        str(tmp_path / "log"),
        str(tmp_path / "labels.parquet"),
        "fraud",
        {},
        QualitySettings(days=7),
    )
    coverage = report.coverage
    assert (coverage.logged_rows, coverage.without_prediction) == (105, 7)
    assert (coverage.labelled_rows, coverage.relogged_rows, coverage.unlabelled_rows) == (60, 5, 40)
    assert (coverage.labels, coverage.unknown_labels) == (62, 2)
    # Labels 10-19 came a second more than 7 days after their prediction. The latest row
    # of an id logged twice is the one joined: its label is not late against it.
    assert coverage.late_labels == 10
    assert report.positive_class == "yes"


def test_the_window_takes_the_last_days_of_the_log(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    table = log_rows(rng.uniform(size=1000), ["0", "1"], rng, days=10)
    write_log(tmp_path / "log", table)
    pd.DataFrame({"id": table["conveyor.id"], "label": rng.integers(0, 2, 1000)}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    report = assess_quality(
        str(tmp_path / "log"), str(tmp_path / "labels.csv"), "fraud", {}, QualitySettings(days=3)
    )
    last = table["conveyor.time"] >= START + pd.Timedelta(days=7)
    assert report.coverage.logged_rows == last.sum() == report.coverage.labelled_rows
    assert report.coverage.unknown_labels == 1000 - last.sum()
    assert [g.group for g in report.groups if g.dimension == "day"] == [
        "2026-11-27", "2026-11-28", "2026-11-29"
    ]  # fmt: skip


def test_label_ids_are_read_as_written(tmp_path: Path) -> None:
    """Account numbers with leading zeros in a CSV stay text (``00000002``, not 2) and join
    every logged row; a Parquet table's integer ids join as their decimal text."""
    rng = np.random.default_rng(12)
    table = log_rows(rng.uniform(size=200), ["0", "1"], rng)
    table["conveyor.id"] = [f"{index:08d}" for index in range(200)]
    write_log(tmp_path / "log", table)
    truth = rng.integers(0, 2, 200)
    pd.DataFrame({"id": table["conveyor.id"], "label": truth}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    assert (tmp_path / "labels.csv").read_text().splitlines()[1].startswith("00000000,")
    settings = QualitySettings(days=0)
    report = assess_quality(
        str(tmp_path / "log"), str(tmp_path / "labels.csv"), "fraud", {}, settings
    )
    assert (report.coverage.labelled_rows, report.coverage.unknown_labels) == (200, 0)
    plain = log_rows(rng.uniform(size=50), ["0", "1"], rng)
    plain["conveyor.id"] = [str(index) for index in range(50)]
    write_log(tmp_path / "plain", plain)
    pd.DataFrame({"id": np.arange(50), "label": truth[:50]}).to_parquet(tmp_path / "l.parquet")
    report = assess_quality(
        str(tmp_path / "plain"), str(tmp_path / "l.parquet"), "fraud", {}, settings
    )
    assert report.coverage.labelled_rows == 50


def _bad_case(tmp_path: Path, case: str) -> tuple[Path, Path]:
    rng = np.random.default_rng(2)
    table = log_rows(
        rng.uniform(size=50), ["0", "1"], rng, model="other" if case == "model" else "fraud"
    )
    if case == "no-predictions":
        table = table[["x", "conveyor.id"]]
    labels = pd.DataFrame({"id": table["conveyor.id"].iloc[:10], "label": rng.integers(0, 2, 10)})
    if case == "unknown-ids":
        labels["id"] = [f"elsewhere-{k}" for k in range(10)]
    elif case == "duplicate-ids":
        labels.loc[3, "id"] = labels.loc[2, "id"]
    elif case == "unseen-label":
        labels.loc[4, "label"] = 7
    elif case == "no-id-column":
        labels = labels.rename(columns={"id": "order"})
    if case == "no-predictions":
        (tmp_path / "log" / "2026-11-20").mkdir(parents=True)
        table.to_parquet(tmp_path / "log" / "2026-11-20" / "old.parquet")
    else:
        write_log(tmp_path / "log", table)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "log", tmp_path / "labels.csv"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown-ids", "none of the 10 label ids is in the log from 2026-11-20 to"),
        ("duplicate-ids", "1 label id(s) appear more than once (e.g. 'req-000002', 2 times)"),
        ("unseen-label", "label '7' is not a class the model predicts ('0', '1')"),
        ("no-id-column", "labels table has no id column 'id'; columns are: order, label"),
        ("model", "the log holds predictions of model 'other', not 'fraud'"),
        ("no-predictions", "no row of the log has a conveyor.prediction"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str
) -> None:
    log, labels = _bad_case(tmp_path, case)
    (tmp_path / "offline.json").write_text(json.dumps({"accuracy": 0.9}))
    code = main(
        ["quality", "--model", "fraud", "--log", str(log), "--labels", str(labels),
         "--offline", str(tmp_path / "offline.json"), "--report", str(tmp_path / "q.md"),
         "--html", str(tmp_path / "q.html")]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "q.md").exists() and not (tmp_path / "q.html").exists()


def test_offline_metrics_from_a_file_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "offline.json"
    path.write_text(json.dumps({"accuracy": 0.9, "roc_auc": 0.8}))
    assert read_offline(path) == {"accuracy": 0.9, "roc_auc": 0.8}
    path.write_text(json.dumps({"auc": 0.8}))
    with pytest.raises(ConveyorError, match=r"unknown metric\(s\) \['auc'\]"):
        read_offline(path)
    path.write_text(json.dumps({"accuracy": "high"}))
    with pytest.raises(ConveyorError, match="accuracy is not a number"):
        read_offline(path)


def test_the_component_judges_a_registered_champion_against_its_offline_metrics(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    """The champion of a real MLflow registry, its offline metrics logged as evaluate logs
    them (``test_<metric>``): the component reads them and judges the logged predictions."""
    from mlflow import MlflowClient

    from conveyor.components.core.training import tracking
    from conveyor.components.core.training.trainer import load_model_dir
    from conveyor.components.quality import quality
    from tests.conftest import register_blessed, train_species_model

    trained = train_species_model(tmp_path, mlflow_server, model_name, species, "v1")
    offline = {"accuracy": 0.99, "log_loss": 0.01, "f1": 0.5}
    tracking.log_metrics(MlflowClient(mlflow_server), trained.run_id, offline, prefix="test_")
    register_blessed(tmp_path, mlflow_server, model_name, trained, "v1", roc_auc=0.9)
    model = load_model_dir(tmp_path / "v1" / "model")
    rng = np.random.default_rng(6)
    live = species.sample(300, random_state=6, replace=True).reset_index(drop=True)
    proba = model.pipeline.predict_proba(live.drop(columns=["species"]))
    classes = [str(c) for c in model.card.classes]
    table = log_rows(proba, classes, rng, model=model_name, features=live.drop(columns=["species"]))
    write_log(tmp_path / "log", table)
    pd.DataFrame({"id": table["conveyor.id"], "label": live["species"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    outputs = {
        "metrics": artifact(Metrics, tmp_path, "metrics"),
        "report": artifact(Markdown, tmp_path, "report.md"),
        "html_report": artifact(HTML, tmp_path, "report.html"),
        "summary": artifact(Artifact, tmp_path, "summary.json"),
    }
    degraded = quality.python_func(
        log=artifact(Dataset, tmp_path, "log"), labels_uri=str(tmp_path / "labels.csv"),
        model_name=model_name, mlflow_tracking_uri=mlflow_server, **outputs,
    )  # fmt: skip
    summary = json.loads(Path(outputs["summary"].path).read_text())
    # The run's test_<metric> metrics, and the version's metric.<name> tag where the run
    # logged none (register copies evaluate's metrics there).
    assert summary["offline"] == pytest.approx({**offline, "roc_auc": 0.9})
    # A species model is not 99 % accurate on its own training rows with a log loss of 0.01.
    assert degraded is True and summary["degraded"] is True
    judged = {d["metric"] for d in summary["degradations"] if d["dimension"] == "overall"}
    assert {"accuracy", "log_loss"} <= judged and "f1" not in judged
    logged = outputs["metrics"].metadata
    assert logged["labelled_rows"] == 300 and logged["label_coverage"] == 1.0
    assert logged["accuracy.lower"] <= logged["accuracy"] <= logged["accuracy.upper"]


def test_a_window_of_two_positive_classes_is_judged_on_the_newest_revision_s(
    tmp_path: Path,
) -> None:
    """fraud/legit: rows of an older revision, served before the card kept a positive class
    (none logged: serving's old rule scored legit, the second class), then rows of a newer
    one logging fraud. The window is judged on fraud, the older rows' scores read as 1 -
    score, and a note says so: the metrics match scikit-learn's on fraud's probability."""
    rng = np.random.default_rng(8)
    rows = 3000
    fraud = rng.beta(2, 5, rows)
    truth = np.where(rng.uniform(size=rows) < fraud, "fraud", "legit")
    table = log_rows(1 - fraud, ["fraud", "legit"], rng)  # probability columns: fraud, legit
    newer = np.arange(rows) >= rows // 2  # log_rows sorts the times
    table["conveyor.revision"] = np.where(newer, "fraud-00002", "fraud-00001")
    table["conveyor.score"] = np.where(newer, fraud, 1 - fraud)
    table["conveyor.positive_class"] = pd.Series(np.where(newer, "fraud", None), dtype="string")
    write_log(tmp_path / "log", table)
    pd.DataFrame({"id": table["conveyor.id"], "label": truth}).to_csv(tmp_path / "labels.csv")
    report = assess_quality(
        str(tmp_path / "log"), str(tmp_path / "labels.csv"), "fraud", {}, QualitySettings(days=0)
    )
    assert report.positive_class == "fraud"
    assert any("'fraud', the newest revision's" in n and "fraud-00001" in n for n in report.notes)
    groups = {(g.dimension, g.group): g.metrics for g in report.groups}
    for key, part in (
        (("overall", "all"), slice(None)),
        (("revision", "fraud-00001"), ~newer),
        (("revision", "fraud-00002"), newer),
    ):
        found = groups[key]
        assert found["roc_auc"].value == pytest.approx(
            skm.roc_auc_score(truth[part] == "fraud", fraud[part]), rel=1e-12
        )
        assert found["log_loss"].value == pytest.approx(
            skm.log_loss(truth[part] == "fraud", fraud[part]), rel=1e-12
        )


def test_a_fraud_or_legit_model_is_about_fraud_offline_in_serving_and_online(
    tmp_path: Path, mlflow_server: str, model_name: str, capsys: pytest.CaptureFixture
) -> None:
    """classes ["fraud", "legit"], fraud the rarer: evaluate's rule (the rarer class) and
    serving's old one (the second class) disagreed. Trained (the card records fraud),
    evaluated, registered, served by the real predictor with its payload log, and judged
    online: evaluate's precision and false-positive rate, the logged ``conveyor.score`` and
    quality's positive class are all about fraud, and quality finds the champion's offline
    false-positive rate."""
    from conveyor.components.core.monitoring.quality import offline_metrics
    from conveyor.components.core.serving.payload_log import POSITIVE_CLASS, SCORE, read_log
    from conveyor.components.core.training.evaluation import Policy, evaluate_model
    from conveyor.components.core.training.registry import register_model
    from conveyor.components.core.training.trainer import load_model_dir, train_model
    from tests.conftest import predictors

    rng = np.random.default_rng(23)

    def table(rows: int, first_id: int) -> pd.DataFrame:
        drawn = fraud_table(rows, rng).drop(columns="segment")
        drawn["label"] = np.where(drawn.pop("fraud") == 1, "fraud", "legit")
        drawn["order_id"] = [f"order-{first_id + i}" for i in range(rows)]
        return drawn

    train, test, live = table(3000, 0), table(1000, 10_000), table(120, 20_000)
    assert (train["label"] == "fraud").mean() < 0.4  # the rarer class
    train.to_parquet(tmp_path / "train.parquet")
    test.to_parquet(tmp_path / "test.parquet")
    model_dir = tmp_path / "model"
    trained = train_model(
        tmp_path / "train.parquet", "label", "logistic_regression", {}, 0, model_dir,
        mlflow_server, model_name, {}, model_name=model_name,
        test_path=tmp_path / "test.parquet", id_columns=["order_id"],
    )  # fmt: skip
    assert trained.card.classes == ["fraud", "legit"] and trained.card.positive_class == "fraud"
    model = load_model_dir(model_dir).pipeline
    features = ["amount", "age"]

    # Offline: evaluate, its positive_class left empty, takes the card's.
    result = evaluate_model(
        model_dir, tmp_path / "test.parquet", "label", model_name, mlflow_server,
        trained.run_id, Policy(), "", tmp_path / "evaluation.json", tmp_path / "report.md",
    )  # fmt: skip
    truth, predicted = test["label"], model.predict(test[features])
    tn, fp, _, _ = skm.confusion_matrix(truth, predicted, labels=["legit", "fraud"]).ravel()
    assert result.scores.positive_class == "fraud" and fp > 0
    assert result.scores.metrics["precision"] == pytest.approx(
        skm.precision_score(truth, predicted, pos_label="fraud")
    )
    assert result.scores.metrics["false_positive_rate"] == pytest.approx(fp / (fp + tn))
    scores = pd.read_parquet(model_dir / "scores.parquet")  # train's, for prediction drift
    np.testing.assert_allclose(scores[SCORE], model.predict_proba(test[features])[:, 0])
    register_model(
        model_dir, tmp_path / "evaluation.json", model_name, mlflow_server, trained.run_id,
        str(tmp_path / "store"), "run-1", "data-hash",
    )  # fmt: skip
    offline = offline_metrics(mlflow_server, model_name)
    assert offline["false_positive_rate"] == pytest.approx(fp / (fp + tn))

    # Serving: the real predictor logs fraud's probability, and says so on every row.
    log = tmp_path / "payloads"
    records = live.drop(columns="label").to_dict("records")
    with predictors(
        {"fraud-00001": model_dir}, model_name, tmp_path, "--payload_log", str(log)
    ) as urls:
        for start in range(0, len(records), 40):
            response = httpx.post(
                f"{urls['fraud-00001']}/v1/models/{model_name}:predict",
                json={"instances": records[start : start + 40]},
            )
            assert response.status_code == 200, response.text
    logged = read_log(str(log)).table.to_pandas().set_index("conveyor.id").loc[live["order_id"]]
    assert set(logged[POSITIVE_CLASS]) == {"fraud"}
    fraud = model.predict_proba(live[features])[:, 0]
    np.testing.assert_allclose(logged[SCORE].to_numpy(), fraud)

    # Online: quality judges fraud, and its metrics are fraud's.
    pd.DataFrame({"id": live["order_id"], "label": live["label"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    report = assess_quality(
        str(log), str(tmp_path / "labels.csv"), model_name, offline, QualitySettings(days=0)
    )
    assert report.positive_class == "fraud"
    overall = report.overall().metrics
    online_predicted = logged["conveyor.prediction"].to_numpy()
    assert overall["precision"].value == pytest.approx(
        skm.precision_score(live["label"], online_predicted, pos_label="fraud", zero_division=0)
    )
    assert overall["roc_auc"].value == pytest.approx(
        skm.roc_auc_score(live["label"] == "fraud", fraud)
    )

    # The champion's evaluation scores, with their labels, from its MLflow run: the offline
    # metrics recomputed from them are evaluate's; the CLI and the component judge with them.
    recorded = champion_scores(mlflow_server, model_name)
    assert recorded is not None and recorded[LABEL_COLUMN].tolist() == test["label"].tolist()
    judged = assess_quality(
        str(log), str(tmp_path / "labels.csv"), model_name, {}, QualitySettings(days=0), recorded
    )
    assert judged.offline["false_positive_rate"] == pytest.approx(fp / (fp + tn))
    assert judged.offline["precision"] == pytest.approx(result.scores.metrics["precision"])
    assert [g.rows for g in judged.offline_groups] == [len(test)]
    assert not [note for note in judged.notes if "exact" in note]
    code = main(
        ["quality", "--model", model_name, "--log", str(log), "--labels",
         str(tmp_path / "labels.csv"), "--days", "0", "--mlflow-tracking-uri", mlflow_server]
    )  # fmt: skip
    assert code in (0, 3) and "offline (champion)" not in capsys.readouterr().out
    from conveyor.components.quality import quality

    scores_file = artifact(Dataset, tmp_path, "scores.parquet")
    recorded.to_parquet(scores_file.path)
    outputs = {
        "metrics": artifact(Metrics, tmp_path, "metrics"),
        "report": artifact(Markdown, tmp_path, "component.md"),
        "html_report": artifact(HTML, tmp_path, "component.html"),
        "summary": artifact(Artifact, tmp_path, "summary.json"),
    }
    quality.python_func(
        log=artifact(Dataset, tmp_path, "payloads"), labels_uri=str(tmp_path / "labels.csv"),
        model_name=model_name, mlflow_tracking_uri="http://127.0.0.1:9", days=0,
        reference_scores=scores_file, **outputs,
    )  # fmt: skip
    summary = json.loads(Path(outputs["summary"].path).read_text())
    assert summary["offline"] == pytest.approx(judged.offline)
    assert summary["offline_groups"][0]["rows"] == len(test)
