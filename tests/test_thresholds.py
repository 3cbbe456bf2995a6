"""Operating thresholds: each policy's choice against a brute-force search, its error rates
on new data in a seeded simulation, and the threshold carried from evaluate through
register to the predictor and the shadow replay."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conveyor.components.core.data.tables import split_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.evaluation import Policy, evaluate_model
from conveyor.components.core.training.registry import load_champion, register_model
from conveyor.components.core.training.thresholds import (
    ThresholdPolicy,
    choose_threshold,
    predicted_indices,
)
from conveyor.components.core.training.trainer import ModelCard, load_model_dir
from tests.conftest import train_species_model

POLICIES = [
    {"max_false_positive_rate": 0.05},
    {"max_false_positive_rate": 0.2},
    {"min_precision": 0.8},
    {"min_recall": 0.9},
    {"costs": {"false_positive": 1, "false_negative": 20}},
    {"costs": {"false_positive": 5, "false_negative": 1}},
]


def scored_rows(seed: int, rows: int, separation: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels (30 % positive) and scores: sigmoid(N(0, 1)) for negatives, shifted for
    positives, rounded so that many rows tie."""
    rng = np.random.default_rng(seed)
    positive = rng.uniform(size=rows) < 0.3
    logits = rng.normal(size=rows) + separation * positive
    return positive, (1 / (1 + np.exp(-logits))).round(2)


def brute_force(positive: np.ndarray, scores: np.ndarray, policy: dict) -> float | None:
    """The lowest score the policy's threshold flags, by trying every score in turn; None
    when no threshold meets it (or, for costs, flagging nothing is cheapest)."""
    (rule, bound), = policy.items()  # fmt: skip
    candidates = []
    for lowest in np.unique(scores):
        flagged = scores >= lowest
        tp, fp = int((flagged & positive).sum()), int((flagged & ~positive).sum())
        recall, fpr = tp / positive.sum(), fp / (~positive).sum()
        precision = tp / (tp + fp)
        if rule == "costs":
            cost = bound["false_positive"] * fp + bound["false_negative"] * (positive.sum() - tp)
            candidates.append((cost, -lowest))
        elif rule == "min_recall" and recall >= bound:
            candidates.append((fp, -tp, -lowest))
        elif tp and (
            (rule == "max_false_positive_rate" and fpr <= bound)
            or (rule == "min_precision" and precision >= bound)
        ):
            candidates.append((-tp, fp, -lowest))
    if rule == "costs" and min(candidates)[0] >= bound["false_negative"] * positive.sum():
        return None
    return -min(candidates)[-1] if candidates else None


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: json.dumps(p))
@pytest.mark.parametrize("seed", range(5))
def test_each_policy_chooses_what_a_brute_force_search_chooses(policy: dict, seed: int) -> None:
    positive, scores = scored_rows(seed, 400)
    choice = choose_threshold(positive, scores, ThresholdPolicy.from_dict(policy))
    lowest = brute_force(positive, scores, policy)
    if lowest is None:
        assert choice.point is None and "flagging no row costs least" in choice.reason
        return
    flagged = scores >= choice.point.threshold
    assert flagged.tolist() == (scores >= lowest).tolist()
    # Halfway to the next lower score: a served score a float's last digit off keeps its class.
    below = scores[scores < lowest]
    assert choice.point.threshold == pytest.approx(
        (lowest + (below.max() if len(below) else 0)) / 2
    )
    assert choice.point.flagged == flagged.sum()
    assert choice.point.recall == pytest.approx((flagged & positive).sum() / positive.sum())
    fpr = (flagged & ~positive).sum() / (~positive).sum()
    assert choice.point.false_positive_rate == pytest.approx(fpr)
    low, high = choice.point.false_positive_rate_interval
    assert low <= fpr <= high


@pytest.mark.parametrize(
    ("policy", "positive", "scores", "why"),
    [
        # The highest score is a negative: any threshold flags one of the two negatives.
        ({"max_false_positive_rate": 0.1}, [0, 1, 0], [0.9, 0.8, 0.1], "flags more than 10.00%"),
        ({"min_precision": 0.99}, [0, 1, 1], [0.9, 0.8, 0.7], "no threshold reaches precision"),
        ({"min_recall": 0.5}, [0, 0], [0.9, 0.1], "no positive rows"),
        ({"max_false_positive_rate": 0.5}, [1, 1], [0.9, 0.1], "no negative rows"),
        ({"max_false_positive_rate": 0.4}, [0, 0, 1], [0.9, 0.8, 0.1], "flags more than"),
        ({"min_recall": 0.5}, [], [], "no rows"),
        # One positive scored below three negatives: missing it costs 1, any flag costs 20+.
        (
            {"costs": {"false_positive": 20, "false_negative": 1}},
            [0, 0, 0, 1],
            [0.9, 0.8, 0.7, 0.2],
            "flagging no row costs least",
        ),
    ],
)
def test_a_policy_no_threshold_meets_says_why_in_one_line(
    policy: dict, positive: list, scores: list, why: str
) -> None:
    choice = choose_threshold(
        np.array(positive, bool), np.array(scores), ThresholdPolicy.from_dict(policy)
    )
    assert choice.point is None
    assert why in choice.reason and "\n" not in choice.reason
    assert choice.reason.startswith("threshold_policy (")


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"max_fpr": 0.05}, "unknown rule 'max_fpr'"),
        (
            {"min_recall": 0.8, "min_precision": 0.9},
            "expected one rule, got min_recall, min_precision",
        ),
        ({"min_recall": 0}, "expected a rate in (0, 1], got 0"),
        ({"min_precision": 1.5}, "expected a rate in (0, 1], got 1.5"),
        ({"min_precision": True}, "expected a rate in (0, 1], got True"),
        ({"min_precision": "0.9"}, "expected a rate in (0, 1], got '0.9'"),
        ({"max_false_positive_rate": float("nan")}, "expected a rate in (0, 1], got nan"),
        ({"costs": {"false_positive": 1}}, "expected {false_positive: X, false_negative: Y}"),
        ({"costs": {"false_positive": 0, "false_negative": 0}}, "not both 0"),
        ({"costs": {"false_positive": -1, "false_negative": 2}}, "numbers >= 0"),
        (["min_recall"], "expected a dict"),
    ],
)
def test_a_malformed_policy_is_one_line_naming_threshold_policy(policy, message: str) -> None:
    with pytest.raises(ConveyorError) as raised:
        ThresholdPolicy.from_dict(policy)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith("threshold_policy")


def test_scores_that_are_not_numbers_are_refused_in_one_line() -> None:
    with pytest.raises(ConveyorError, match=r"^threshold_policy: 1 evaluation score\(s\) are not"):
        choose_threshold(
            np.array([True, False, True]), np.array([0.9, np.nan, 0.1]),
            ThresholdPolicy("min_recall", 1.0),
        )  # fmt: skip


def test_a_recall_bound_takes_the_most_recall_among_the_fewest_false_positives() -> None:
    # Both positives outrank the negative: recall 1 costs no more false positives than 0.5.
    choice = choose_threshold(
        np.array([True, True, False]), np.array([0.9, 0.8, 0.5]), ThresholdPolicy("min_recall", 0.5)
    )
    assert (choice.point.recall, choice.point.false_positive_rate) == (1.0, 0.0)


def test_an_empty_policy_keeps_the_most_probable_class() -> None:
    assert ThresholdPolicy.from_dict({}) is None
    probabilities = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert predicted_indices(probabilities, 1, None).tolist() == [0, 1]
    assert predicted_indices(probabilities, 1, 0.35).tolist() == [1, 1]
    assert predicted_indices(probabilities, 0, 0.65).tolist() == [1, 1]


def test_the_stated_error_rates_of_a_false_positive_bound_hold_on_new_data() -> None:
    """The module's claim, simulated: chosen for a 5 % false-positive rate on 700
    negatives, the rate on new data is above 5 % in about half of 400 choices, and inside
    the point's 95 % Wilson interval in about 95 % of them."""
    bound, runs, normal = 0.05, 400, NormalDist()
    above = inside = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        positive = rng.uniform(size=1000) < 0.3
        scores = 1 / (1 + np.exp(-(rng.normal(size=1000) + 1.2 * positive)))
        policy = ThresholdPolicy("max_false_positive_rate", bound)
        point = choose_threshold(positive, scores, policy).point
        # Negatives' logits are N(0, 1): the rate on new data at a threshold is exact.
        true_rate = 1 - normal.cdf(float(np.log(point.threshold / (1 - point.threshold))))
        above += true_rate > bound
        low, high = point.false_positive_rate_interval
        inside += low <= true_rate <= high
    assert 0.3 < above / runs < 0.7, above / runs
    assert inside / runs >= 0.9, inside / runs


# -- Through evaluate, register, the predictor's card and the champion ------------------------


def fraud_table(rows: int = 1200, seed: int = 11) -> pd.DataFrame:
    """A binary ``species`` (fraud 20 %) from two numeric features and a category."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3, 1, size=rows)
    hour = rng.integers(0, 24, size=rows)
    channel = rng.choice(["web", "app", "phone"], size=rows)
    logit = 0.8 * np.log(amount) - 3.5 + (channel == "phone") * 1.0 + rng.normal(0, 1, rows)
    fraud = logit > np.quantile(logit, 0.8)
    return pd.DataFrame(
        {"amount": amount, "hour": hour, "channel": channel,
         "species": np.where(fraud, "fraud", "ok")}
    )  # fmt: skip


def trained_fraud_model(tmp_path: Path, server: str, name: str) -> tuple[Any, pd.DataFrame]:
    """A model of ``fraud_table`` trained into ``tmp_path/v1``, and its evaluation split
    (written to ``tmp_path/test``)."""
    train, test = split_table(fraud_table(), "species", 0.4, 0, "t")
    test.to_parquet(tmp_path / "test")
    return train_species_model(tmp_path, server, name, train, "v1"), test


def evaluate_at(
    tmp_path: Path, server: str, name: str, run_id: str, policy: dict, positive: str = "fraud"
):
    return evaluate_model(
        tmp_path / "v1" / "model", tmp_path / "test", "species", name, server, run_id,
        Policy(floors={}, threshold=ThresholdPolicy.from_dict(policy)), positive,
        tmp_path / "v1" / "evaluation.json", tmp_path / "v1" / "report.md",
    )  # fmt: skip


def test_a_false_positive_bound_is_met_stored_with_the_model_and_served(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    trained, test = trained_fraud_model(tmp_path, mlflow_server, model_name)
    result = evaluate_at(
        tmp_path, mlflow_server, model_name, trained.run_id, {"max_false_positive_rate": 0.02}
    )
    point = result.threshold.point
    assert result.decision.blessed
    assert point.false_positive_rate <= 0.02
    assert result.scores.metrics["false_positive_rate"] == pytest.approx(point.false_positive_rate)
    assert result.scores.metrics["recall"] == pytest.approx(point.recall)
    verdict = json.loads((tmp_path / "v1" / "evaluation.json").read_text())
    assert verdict["threshold"]["value"] == point.threshold
    assert verdict["threshold"]["policy"] == {"max_false_positive_rate": 0.02}
    report = (tmp_path / "v1" / "report.md").read_text()
    assert "## Operating threshold" in report and f"**{point.threshold:.4g}**" in report

    registration = register_model(
        tmp_path / "v1" / "model", tmp_path / "v1" / "evaluation.json", model_name,
        mlflow_server, trained.run_id, str(tmp_path / "store"), "v1", "data-hash",
    )  # fmt: skip
    served = load_model_dir(Path(registration.storage_uri))
    assert served.card.decision_threshold == point.threshold and served.card.format_version == 4
    assert Path(registration.storage_uri).name.startswith(trained.card.sha256[:16] + "-")
    features = test.drop(columns="species")
    probabilities = served.pipeline.predict_proba(features)
    fraud = list(served.pipeline.classes_).index("fraud")
    picked = served.card.predicted_indices(probabilities)
    assert (picked == fraud).tolist() == (probabilities[:, fraud] >= point.threshold).tolist()
    assert (picked != probabilities.argmax(axis=1)).any()  # the threshold changed some answers

    # As a champion, the model is compared at its own threshold.
    from mlflow import MlflowClient

    from conveyor.components.core.training.registry import find_champion

    champion = load_champion(
        MlflowClient(mlflow_server), find_champion(MlflowClient(mlflow_server), model_name)
    )
    assert champion.card.decision_threshold == point.threshold


def test_a_policy_the_model_cannot_meet_is_not_blessed_in_one_line(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    trained, test = trained_fraud_model(tmp_path, mlflow_server, model_name)
    # The row the model is surest is fraud is not: no threshold has precision 1.
    fraud = list(trained.card.classes).index("fraud")
    scores = load_model_dir(tmp_path / "v1" / "model").pipeline.predict_proba(test)[:, fraud]
    test.iloc[int(np.argmax(scores)), test.columns.get_loc("species")] = "ok"
    test.to_parquet(tmp_path / "test")
    result = evaluate_at(
        tmp_path, mlflow_server, model_name, trained.run_id, {"min_precision": 1.0}
    )
    assert not result.decision.blessed
    assert result.decision.reason.startswith("threshold_policy (precision at least 1): ")
    assert "\n" not in result.decision.reason
    verdict = json.loads((tmp_path / "v1" / "evaluation.json").read_text())
    assert verdict["blessed"] is False and verdict["threshold"]["value"] is None
    with pytest.raises(ConveyorError, match="did not bless"):
        register_model(
            tmp_path / "v1" / "model", tmp_path / "v1" / "evaluation.json", model_name,
            mlflow_server, trained.run_id, str(tmp_path / "store"), "v1", "data-hash",
        )  # fmt: skip
    assert not (tmp_path / "store").exists()


def test_a_threshold_for_another_class_than_the_card_s_is_refused(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    trained, test = trained_fraud_model(tmp_path, mlflow_server, model_name)
    assert trained.card.positive_class == "fraud"  # the rarer class
    with pytest.raises(ConveyorError, match=r"the card records 'fraud', evaluate was given 'ok'"):
        evaluate_at(tmp_path, mlflow_server, model_name, trained.run_id, {"min_recall": 0.9}, "ok")


def test_a_version_is_not_reused_at_another_threshold(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    trained, test = trained_fraud_model(tmp_path, mlflow_server, model_name)
    store = str(tmp_path / "store")
    arguments = (
        tmp_path / "v1" / "model", tmp_path / "v1" / "evaluation.json", model_name,
        mlflow_server, trained.run_id, store, "v1", "data-hash",
    )  # fmt: skip
    policy = {"max_false_positive_rate": 0.05}
    evaluate_at(tmp_path, mlflow_server, model_name, trained.run_id, policy)
    first = register_model(*arguments)
    assert register_model(*arguments).version == first.version  # a retry reuses it
    # The same run's evaluation, had it chosen another threshold.
    verdict_path = tmp_path / "v1" / "evaluation.json"
    verdict = json.loads(verdict_path.read_text())
    verdict["threshold"]["value"] = 0.123
    verdict_path.write_text(json.dumps(verdict))
    with pytest.raises(
        ConveyorError, match=rf"version {first.version} of .* at decision threshold"
    ):
        register_model(*arguments)
    assert [p.name for p in (tmp_path / "store" / model_name).iterdir()] == [
        Path(first.storage_uri).name
    ]


def test_a_threshold_policy_for_more_classes_is_refused(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    train, test = split_table(species, "species", 0.3, 0, "t")
    test.to_parquet(tmp_path / "test")
    trained = train_species_model(tmp_path, mlflow_server, model_name, train, "v1")
    with pytest.raises(ConveyorError, match=r"needs a binary model; this one has 3 classes"):
        evaluate_model(
            tmp_path / "v1" / "model", tmp_path / "test", "species", model_name, mlflow_server,
            trained.run_id, Policy(threshold=ThresholdPolicy("min_recall", 0.9)), "",
            tmp_path / "v1" / "evaluation.json", tmp_path / "v1" / "report.md",
        )  # fmt: skip
    assert not (tmp_path / "v1" / "evaluation.json").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decision_threshold": 1.5}, "expected a probability in [0, 1]"),
        ({"decision_threshold": "0.5"}, "expected a number or null"),
        ({"positive_class": None}, "needs 'positive_class'"),
        ({"format_version": 3}, "unknown key 'decision_threshold' in a format-3 model card"),
    ],
)
def test_a_card_s_threshold_is_checked(change: dict, message: str) -> None:
    card = {
        "estimator": "logistic_regression", "hyperparameters": {}, "target": "y",
        "classes": [0, 1], "features": [{"name": "x", "kind": "numeric", "dtype": "float64"}],
        "seed": 0, "format_version": 4, "positive_class": "1", "decision_threshold": 0.3,
    }  # fmt: skip
    assert ModelCard.from_json(json.dumps(card)).decision_threshold == 0.3
    with pytest.raises(ConveyorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelCard.from_json(json.dumps({**card, **change}))


# -- End to end: conveyor run, then the real predictor -----------------------------------------


CHURN = "churn-at-threshold"  # its own name: the MLflow server is shared by the session


@pytest.mark.slow
def test_a_local_run_serves_its_classes_at_the_threshold_evaluate_chose(
    tmp_path: Path, capsys: pytest.CaptureFixture, mlflow_server: str
) -> None:
    import httpx
    from mlflow import MlflowClient

    from conveyor.components.core.serving.payload_log import read_log
    from conveyor.components.core.training.registry import find_champion
    from conveyor.pipelines.cli import main
    from tests.churn import churn_table
    from tests.conftest import predictors

    churn_table(600, seed=11).to_csv(tmp_path / "churn.csv", index=False)
    capsys.readouterr()
    code = main([
        "run", "--data", str(tmp_path / "churn.csv"), "--label", "churned", "--model", CHURN,
        "--runs-dir", str(tmp_path / "runs"), "--param", f"mlflow_tracking_uri={mlflow_server}",
        "--param", 'threshold_policy={"min_recall": 0.9}',
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads(
        Path(printed.strip().splitlines()[-1].removeprefix("Artifacts: ")).read_text()
    )
    champion = find_champion(MlflowClient(mlflow_server), CHURN)
    model_dir = Path(champion.tags["storage_uri"])
    served = load_model_dir(model_dir)
    threshold = served.card.decision_threshold
    assert threshold is not None and champion.tags["decision_threshold"] == repr(threshold)
    assert summary["metrics"]["recall"] >= 0.9

    requests = churn_table(200, seed=12).drop(columns=["churned"])
    rows = json.loads(requests.to_json(orient="records", date_format="iso"))
    probabilities = served.pipeline.predict_proba(pd.DataFrame(rows))
    positive = [str(c) for c in served.card.classes].index(served.card.positive_class)
    classes = np.asarray(served.card.classes)
    expected = classes[np.where(probabilities[:, positive] >= threshold, positive, 1 - positive)]
    assert (expected != classes[probabilities.argmax(axis=1)]).any()  # it changes answers
    log = tmp_path / "payloads"
    with predictors({"churn-00001": model_dir}, CHURN, tmp_path, "--payload_log", str(log)) as urls:
        url = urls["churn-00001"]
        v1 = httpx.post(f"{url}/v1/models/{CHURN}:predict", json={"instances": rows})
        inputs = [
            {"name": name, "shape": [len(requests)], "datatype": "BYTES" if requests[name].dtype == object else "FP64",
             "data": [row[name] for row in rows]}
            for name in requests.columns if requests[name].dtype != bool
        ]  # fmt: skip
        inputs += [
            {"name": name, "shape": [len(requests)], "datatype": "BOOL", "data": [row[name] for row in rows]}
            for name in requests.columns if requests[name].dtype == bool
        ]  # fmt: skip
        v2 = httpx.post(f"{url}/v2/models/{CHURN}/infer", json={"inputs": inputs})
        counted = httpx.get(f"{url}/metrics").text
    assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
    assert v1.json()["predictions"] == expected.tolist()
    outputs = {output["name"]: output for output in v2.json()["outputs"]}
    assert outputs["predictions"]["data"] == [str(c) for c in expected]
    answered = np.array(outputs["probabilities"]["data"]).reshape(len(requests), -1)
    assert answered == pytest.approx(probabilities)  # the probabilities are unchanged
    # The payload log (online quality's predictions) and the predicted-class counter (the
    # canary's comparison) both follow the threshold.
    logged = read_log(str(log)).table.column("conveyor.prediction").to_pylist()
    assert sorted(map(str, logged)) == sorted(map(str, [*expected, *expected]))
    # Monitoring compares the logged classes with the champion's evaluation classes at the
    # same threshold: serving them is no prediction drift.
    capsys.readouterr()
    code = main([
        "monitor", "--inputs", str(log), "--days", "2", "--model", CHURN, "--no-retrain",
        "--runs-dir", str(tmp_path / "runs"), "--param", f"mlflow_tracking_uri={mlflow_server}",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    artifacts = Path(printed.strip().splitlines()[-1].removeprefix("Artifacts: "))
    (found,) = artifacts.glob("prediction*drift/summary")
    classes_compared = [
        r for r in json.loads(found.read_text())["results"] if r["output"] == "class"
    ]
    assert classes_compared and not any(r["drifted"] for r in classes_compared), printed
    flagged = int((expected == classes[positive]).sum())
    series = f'conveyor_predictions_total{{class="{classes[positive]}",model="{CHURN}",revision="churn-00001"}}'
    assert f"{series} {2 * flagged}.0" in counted


def test_the_shadow_replay_compares_each_model_at_its_own_threshold() -> None:
    from conveyor.components.core.monitoring.shadow import replay
    from conveyor.components.core.training.trainer import fit_model
    from tests.churn import churn_table

    table = churn_table(600, seed=1)
    model = fit_model(table, "churned", "logistic_regression", {}, 0)
    assert model.card.positive_class is not None
    rows = churn_table(300, seed=2).drop(columns=["churned"])
    at_half = replay(model, model, rows, batch_rows=100)
    assert (at_half.champion == at_half.challenger).all()
    strict = replay(model, model.at_threshold(0.8), rows, batch_rows=100)
    score = strict.challenger_probabilities[:, strict.score_index]
    differ = strict.champion != strict.challenger
    # The same model: they disagree exactly on the rows scored between 0.5 and 0.8.
    assert differ.any() and differ.tolist() == ((score > 0.5) & (score < 0.8)).tolist()
    assert (strict.challenger == strict.score_index).tolist() == (score >= 0.8).tolist()
