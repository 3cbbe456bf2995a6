"""Metrics and curves, checked against counts made by hand from the predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from conveyor.components.core.data.tables import split_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training.metrics import METRIC_DIRECTIONS, positive_label, score
from conveyor.components.core.training.trainer import fit_model


def _fitted(table: pd.DataFrame, target: str):
    train, test = split_table(table, target, 0.3, 0, "t")
    return fit_model(train, target, "logistic_regression", {}, 0).pipeline, test


def test_binary_metrics_match_hand_counts(breast_cancer: pd.DataFrame) -> None:
    model, test = _fitted(breast_cancer, "diagnosis")
    scores = score(model, test, "diagnosis")
    metrics, positive = scores.metrics, scores.positive_class
    assert positive == "malignant"  # no conventional name: the rarer class
    truth = test["diagnosis"].to_numpy() == positive
    proba = model.predict_proba(test.drop(columns="diagnosis"))[
        :, list(model.classes_).index(positive)
    ]
    predicted = proba > 0.5
    tp, fp, fn = (truth & predicted).sum(), (~truth & predicted).sum(), (truth & ~predicted).sum()
    assert metrics["accuracy"] == pytest.approx((truth == predicted).mean())
    assert metrics["precision"] == pytest.approx(tp / (tp + fp))
    assert metrics["recall"] == pytest.approx(tp / (tp + fn))
    assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # ROC-AUC is the chance a positive outscores a negative.
    pairs = proba[truth][:, None] - proba[~truth][None, :]
    assert metrics["roc_auc"] == pytest.approx((pairs > 0).mean() + 0.5 * (pairs == 0).mean())
    chosen = np.where(truth, proba, 1 - proba)
    assert metrics["log_loss"] == pytest.approx(-np.log(np.clip(chosen, 1e-15, 1)).mean())


def test_multiclass_metrics_are_macro_averaged(species: pd.DataFrame) -> None:
    model, test = _fitted(species, "species")
    metrics = score(model, test, "species").metrics
    predicted = model.predict(test.drop(columns="species"))
    truth = test["species"].to_numpy()
    recalls = [(predicted[truth == label] == label).mean() for label in model.classes_]
    precisions = [(truth[predicted == label] == label).mean() for label in model.classes_]
    f1s = [2 * p * r / (p + r) for p, r in zip(precisions, recalls, strict=True)]
    assert metrics["recall"] == pytest.approx(np.mean(recalls))
    assert metrics["precision"] == pytest.approx(np.mean(precisions))
    assert metrics["f1"] == pytest.approx(np.mean(f1s))
    proba = model.predict_proba(test.drop(columns="species"))
    chosen = proba[np.arange(len(truth)), np.searchsorted(model.classes_, truth)]
    assert metrics["log_loss"] == pytest.approx(-np.log(chosen).mean())
    assert 0.5 < metrics["roc_auc"] <= 1.0


def test_curves_for_the_kfp_ui(breast_cancer: pd.DataFrame, species: pd.DataFrame) -> None:
    model, test = _fitted(breast_cancer, "diagnosis")
    curves = score(model, test, "diagnosis").curves
    assert curves.labels == ["benign", "malignant"]
    assert sum(map(sum, curves.confusion)) == len(test)
    fpr, tpr, thresholds = curves.roc
    assert (fpr[0], tpr[-1]) == (0.0, 1.0) and len(fpr) <= 200
    assert max(thresholds) <= 1.0  # sklearn's leading +inf is not valid JSON
    model, test = _fitted(species, "species")
    multiclass = score(model, test, "species").curves
    assert multiclass.roc is None and len(multiclass.confusion) == 3


@pytest.mark.parametrize(
    "labels",
    [
        lambda score: (score > 0).astype(int),  # 0/1
        lambda score: score > 0,  # bool
        lambda score: np.where(score > 0, 7, -3),  # any two integers
        lambda score: np.digitize(score, [-0.5, 0.5]),  # three integer classes
    ],
)
def test_numeric_and_boolean_targets(labels) -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"a": rng.normal(size=300), "b": rng.choice(["x", "y"], 300)})
    table["y"] = labels(table["a"] + rng.normal(0, 0.3, 300))
    model, test = _fitted(table, "y")
    metrics = score(model, test, "y").metrics
    predicted = model.predict(test.drop(columns="y"))
    assert metrics["accuracy"] == pytest.approx((predicted == test["y"].to_numpy()).mean())
    assert metrics["roc_auc"] > 0.8
    assert score(model, test, "y").curves.labels == [str(c) for c in model.classes_]


@pytest.mark.parametrize(
    ("classes", "truth", "requested", "expected"),
    [
        (["no", "yes"], ["yes", "no", "no"], "", "yes"),  # named yes, though more frequent
        ([False, True], [True, True, False], "", True),
        ([0, 1], [1, 1, 0], "", 1),
        (["fraud", "legit"], ["legit", "legit", "fraud"], "", "fraud"),  # the rarer class
        (["fraud", "legit"], ["legit", "legit", "fraud"], "legit", "legit"),
        ([-3, 7], [7, -3, -3], "7", 7),
    ],
)
def test_positive_class(classes: list, truth: list, requested: str, expected: object) -> None:
    assert positive_label(np.array(classes), np.array(truth), requested) == expected


def test_unknown_positive_class_is_named() -> None:
    with pytest.raises(
        ConveyorError, match=r"positive_class 'spam' is not a class; classes: 'ham', 'eggs'"
    ):
        positive_label(np.array(["ham", "eggs"]), np.array(["ham"]), "spam")


def test_chosen_positive_class_drives_precision(breast_cancer: pd.DataFrame) -> None:
    model, test = _fitted(breast_cancer, "diagnosis")
    malignant = score(model, test, "diagnosis", "malignant").metrics
    benign = score(model, test, "diagnosis", "benign").metrics
    assert malignant["accuracy"] == benign["accuracy"] and malignant["roc_auc"] == pytest.approx(
        benign["roc_auc"]
    )
    assert malignant["recall"] != benign["recall"]


@pytest.mark.parametrize("positive_class", ["malignant", "benign"])
def test_false_positive_rate_matches_scikit_learns_confusion_matrix(
    breast_cancer: pd.DataFrame, positive_class: str
) -> None:
    model, test = _fitted(breast_cancer, "diagnosis")
    scores = score(model, test, "diagnosis", positive_class)
    truth = test["diagnosis"].to_numpy()
    predicted = model.predict(test.drop(columns="diagnosis"))
    negative = next(c for c in model.classes_ if c != positive_class)
    matrix = skm.confusion_matrix(truth, predicted, labels=[negative, positive_class])
    tn, fp, _, _ = matrix.ravel()
    assert fp > 0  # the rate is not trivially 0
    assert scores.metrics["false_positive_rate"] == pytest.approx(fp / (fp + tn))
    assert METRIC_DIRECTIONS["false_positive_rate"] == -1


def test_a_multiclass_target_has_no_false_positive_rate(species: pd.DataFrame) -> None:
    model, test = _fitted(species, "species")
    assert "false_positive_rate" not in score(model, test, "species").metrics
