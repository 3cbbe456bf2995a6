"""Evaluate's core: the blessing decision, and champion/challenger against a real registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conveyor.components.core.data.tables import split_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.evaluation import (
    MIN_EVALUATION_ROWS,
    ChampionScore,
    Policy,
    decide,
    evaluate_model,
    imbalance_warnings,
    small_sample_warnings,
)
from conveyor.components.core.training.registry import register_model
from tests.conftest import register_blessed, train_species_model

METRICS = {"accuracy": 0.9, "roc_auc": 0.95, "log_loss": 0.3}


def champion(value: float) -> ChampionScore:
    return ChampionScore("3", value, scored_on_current_data=True)


def test_first_model_is_judged_on_floors_only() -> None:
    assert decide(METRICS, Policy("roc_auc", floors={"accuracy": 0.8}), None).blessed
    refused = decide(METRICS, Policy("roc_auc", floors={"accuracy": 0.95, "log_loss": 0.2}), None)
    assert not refused.blessed
    assert refused.failed_floors == [
        "accuracy 0.9000 is below the floor 0.95",
        "log_loss 0.3000 is above the ceiling 0.2",
    ]


@pytest.mark.parametrize(
    ("champion_value", "policy", "blessed", "winner"),
    [
        (0.94, Policy("roc_auc"), True, "challenger wins"),
        (0.95, Policy("roc_auc"), False, "champion v3 stays"),  # a tie keeps the champion
        (0.96, Policy("roc_auc"), False, "champion v3 stays"),
        (0.94, Policy("roc_auc", min_improvement=0.02), False, "champion v3 stays"),
        (
            0.955,
            Policy("roc_auc", min_improvement=-0.01, min_relative_improvement=-0.01),
            True,
            "challenger wins",
        ),
        (0.94, Policy("roc_auc", min_relative_improvement=0.02), False, "champion v3 stays"),
        (0.35, Policy(metric="log_loss"), True, "challenger wins"),  # lower is better
        (0.35, Policy(metric="log_loss", direction="maximize"), False, "champion v3 stays"),
    ],
)
def test_change_threshold_against_the_champion(
    champion_value: float, policy: Policy, blessed: bool, winner: str
) -> None:
    decision = decide(METRICS, policy, champion(champion_value))
    assert decision.blessed is blessed
    assert decision.reason.startswith(winner)
    assert decision.delta == pytest.approx(METRICS[policy.metric] - champion_value)


def test_a_metric_that_could_not_be_measured_fails_its_floor() -> None:
    # roc_auc is NaN on an evaluation split of one class: NaN < floor is False.
    decision = decide(
        {**METRICS, "roc_auc": float("nan")}, Policy("roc_auc", floors={"roc_auc": 0.7}), None
    )
    assert not decision.blessed
    assert decision.failed_floors == [
        "roc_auc could not be measured on the evaluation split (one class only?)"
    ]


def test_a_champion_at_zero_has_no_relative_change() -> None:
    decision = decide({"log_loss": 0.1}, Policy(metric="log_loss"), champion(0.0))
    assert not decision.blessed and decision.relative_gain is None
    assert "(+0.1000)" in decision.reason


def test_a_better_model_still_needs_its_floors() -> None:
    decision = decide(METRICS, Policy("roc_auc", floors={"accuracy": 0.99}), champion(0.5))
    assert not decision.blessed
    assert "challenger wins" in decision.reason and "below the floor 0.99" in decision.reason


def test_unknown_metric_is_named() -> None:
    with pytest.raises(ConveyorError, match=r"unknown metric\(s\) \['auc'\]"):
        Policy(metric="auc").validate()


def _evaluate(tmp_path: Path, server: str, name: str, tag: str, run_id: str, test: Path):
    return evaluate_model(
        tmp_path / tag / "model", test, "species", name, server, run_id,
        Policy(floors={"accuracy": 0.3}), "", tmp_path / tag / "evaluation.json", tmp_path / tag / "report.md",
    )  # fmt: skip


def test_challenger_is_compared_with_the_champion_on_the_same_split(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    train, test = split_table(species, "species", 0.3, 0, "t")
    test.to_parquet(tmp_path / "test")
    weak = train_species_model(tmp_path, mlflow_server, model_name, train, "weak", C=0.001)
    first = _evaluate(tmp_path, mlflow_server, model_name, "weak", weak.run_id, tmp_path / "test")
    assert first.decision.blessed and first.decision.champion is None
    register_model(
        tmp_path / "weak" / "model", tmp_path / "weak" / "evaluation.json", model_name,
        mlflow_server, weak.run_id, str(tmp_path / "store"), "weak", "data-hash",
    )  # fmt: skip

    strong = train_species_model(tmp_path, mlflow_server, model_name, train, "strong", C=10.0)
    second = _evaluate(
        tmp_path, mlflow_server, model_name, "strong", strong.run_id, tmp_path / "test"
    )
    assert second.decision.champion.value == pytest.approx(first.scores.metrics["roc_auc"])
    assert second.decision.champion.scored_on_current_data
    assert second.decision.blessed
    assert second.decision.delta == pytest.approx(
        second.scores.metrics["roc_auc"] - first.scores.metrics["roc_auc"]
    )
    verdict = json.loads((tmp_path / "strong" / "evaluation.json").read_text())
    assert verdict["blessed"] and verdict["champion"]["version"] == "1"
    report = (tmp_path / "strong" / "report.md").read_text()
    assert (
        "**Blessed**: challenger wins" in report
        and "champion v1 (on this evaluation split)" in report
    )


def test_a_champion_that_cannot_score_the_data_is_compared_as_recorded(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    train, test = split_table(species, "species", 0.3, 0, "t")
    test.to_parquet(tmp_path / "test")
    # The champion was trained with a column the current data no longer has.
    old = train_species_model(tmp_path, mlflow_server, model_name, train.assign(legacy=1.0), "old")
    register_blessed(tmp_path, mlflow_server, model_name, old, "old", roc_auc=0.5)
    new = train_species_model(tmp_path, mlflow_server, model_name, train, "new")
    decision = _evaluate(
        tmp_path, mlflow_server, model_name, "new", new.run_id, tmp_path / "test"
    ).decision
    assert decision.champion.value == 0.5 and not decision.champion.scored_on_current_data
    assert "it cannot score this data" in decision.reason and "'legacy'" in decision.reason
    assert decision.blessed


def test_the_false_positive_rate_is_a_ceiling_and_lower_is_better() -> None:
    metrics = {**METRICS, "false_positive_rate": 0.08}
    refused = decide(metrics, Policy("roc_auc", floors={"false_positive_rate": 0.05}), None)
    assert refused.failed_floors == ["false_positive_rate 0.0800 is above the ceiling 0.05"]
    policy = Policy(metric="false_positive_rate")
    policy.validate()
    assert decide(metrics, policy, champion(0.1)).reason.startswith("challenger wins")


def test_a_multiclass_model_judged_on_the_false_positive_rate_is_refused_writing_nothing(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    """A multi-class model has no false-positive rate: a policy naming it is refused in one
    line, before any verdict is written (register would read one)."""
    train, test = split_table(species, "species", 0.3, 0, "t")
    test.to_parquet(tmp_path / "test")
    trained = train_species_model(tmp_path, mlflow_server, model_name, train, "multi")
    with pytest.raises(ConveyorError) as raised:
        evaluate_model(
            tmp_path / "multi" / "model", tmp_path / "test", "species", model_name,
            mlflow_server, trained.run_id, Policy(floors={"false_positive_rate": 0.1}), "",
            tmp_path / "multi" / "evaluation.json", tmp_path / "multi" / "report.md",
        )  # fmt: skip
    assert str(raised.value).startswith(
        "the policy names 'false_positive_rate', which a model of 3 classes does not have"
    )
    assert not (tmp_path / "multi" / "evaluation.json").exists()


def test_a_small_evaluation_split_is_warned_about_with_the_accuracys_interval() -> None:
    (warning,) = small_sample_warnings(6, 1.0)
    # All 6 right: Wilson's lower bound is n / (n + z^2), in closed form.
    assert f"[{6 / (6 + 1.959963984540054**2):.3f}, 1.000]" in warning
    assert warning.startswith("only 6 evaluation rows (under 50): accuracy 1.000")
    assert small_sample_warnings(MIN_EVALUATION_ROWS, 1.0) == ()


def test_the_stated_interval_covers_the_true_accuracy_95_percent_of_the_time() -> None:
    # Seeded: 4,000 evaluation splits of 30 rows from a model whose accuracy is 0.85.
    rng = np.random.default_rng(7)
    truth, rows = 0.85, 30
    covered = 0
    for right in rng.binomial(rows, truth, size=4000):
        (warning,) = small_sample_warnings(rows, right / rows)
        low, high = (float(x) for x in warning.split("[")[1].split("]")[0].split(", "))
        covered += low <= truth <= high
    assert 0.93 <= covered / 4000 <= 0.98  # Wilson's coverage at n=30 is close to 95 %


def test_a_tiny_split_is_blessed_only_with_the_warning_in_its_verdict_and_report(
    tmp_path: Path, species: pd.DataFrame, mlflow_server: str, model_name: str
) -> None:
    train, test = split_table(species, "species", 0.3, 0, "t")
    test.head(12).to_parquet(tmp_path / "test")
    trained = train_species_model(tmp_path, mlflow_server, model_name, train, "tiny", C=1.0)
    result = _evaluate(
        tmp_path, mlflow_server, model_name, "tiny", trained.run_id, tmp_path / "test"
    )
    (warning,) = result.warnings
    assert warning.startswith("only 12 evaluation rows (under 50)")
    verdict = json.loads((tmp_path / "tiny" / "evaluation.json").read_text())
    assert verdict["warnings"] == [warning]
    assert f"**Warning**: {warning}" in (tmp_path / "tiny" / "report.md").read_text()


def test_a_rare_positive_class_judged_by_accuracy_is_warned_about() -> None:
    """Fraud at 3 %: accuracy rewards always answering "legit" with 0.970; the warning
    says so and names the way out. At 5 %, or judged by roc_auc, or with more classes,
    nothing is said."""
    rare = pd.Series(["fraud"] * 3 + ["legit"] * 97)
    (warning,) = imbalance_warnings(rare, "fraud", "accuracy")
    assert warning.startswith("the positive class 'fraud' is 3.0% of the evaluation rows")
    assert "scores 0.970" in warning and "{class_weight: balanced}" in warning
    assert imbalance_warnings(rare, "fraud", "roc_auc") == ()
    assert imbalance_warnings(pd.Series([1] * 5 + [0] * 95), 1, "accuracy") == ()
    assert imbalance_warnings(pd.Series([1] * 4 + [0] * 96), 1, "accuracy") != ()
    assert imbalance_warnings(pd.Series(list("abc") * 40), "a", "accuracy") == ()


@pytest.mark.parametrize("estimator", ["logistic_regression", "random_forest",
                                       "hist_gradient_boosting"])  # fmt: skip
def test_balanced_class_weights_find_more_of_a_rare_class(estimator: str) -> None:
    """On a seeded table with a 5 % positive class, ``class_weight: balanced`` raises each
    estimator's recall of it on the evaluation split (the weights reach the estimator)."""
    from conveyor.components.core.training.metrics import score
    from conveyor.components.core.training.trainer import fit_model

    rng = np.random.default_rng(3)
    rows = 3000
    x = rng.normal(size=(rows, 3))
    positive = x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.8, size=rows) > 2.3
    table = pd.DataFrame(x, columns=["a", "b", "c"]).assign(label=positive.astype(int))
    assert 0.02 < table["label"].mean() < 0.06
    train, test = split_table(table, "label", 0.3, 0, "t")
    plain, balanced = (
        score(
            fit_model(train, "label", estimator, weights, 0).pipeline, test, "label", "1"
        ).metrics["recall"]
        for weights in ({}, {"class_weight": "balanced"})
    )
    assert balanced > plain + 0.1, (plain, balanced)


def test_the_imbalance_warning_reaches_the_verdict(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    rng = np.random.default_rng(4)
    table = pd.DataFrame({"x": rng.normal(size=600), "y": rng.normal(size=600)})
    table["species"] = np.where(table["x"] > 1.9, "rare", "common")  # about 3 %
    train, test = split_table(table, "species", 0.5, 0, "t")
    test.to_parquet(tmp_path / "test")
    trained = train_species_model(tmp_path, mlflow_server, model_name, train, "rare")
    result = evaluate_model(
        tmp_path / "rare" / "model", tmp_path / "test", "species", model_name, mlflow_server,
        trained.run_id, Policy(metric="accuracy", floors={}), "rare",
        tmp_path / "rare" / "evaluation.json", tmp_path / "rare" / "report.md",
    )  # fmt: skip
    (warning,) = result.warnings
    assert warning.startswith("the positive class 'rare' is ")
    verdict = json.loads((tmp_path / "rare" / "evaluation.json").read_text())
    assert verdict["warnings"] == [warning]
