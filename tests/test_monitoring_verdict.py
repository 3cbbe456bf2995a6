"""The monitoring verdict: real drift, prediction-drift and quality summaries weighed into
whether to retrain, and pushed to a real Pushgateway, where a run that no longer finds a
problem clears it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from kfp.dsl import Artifact, Markdown
from prometheus_client.parser import text_string_to_metric_families

from conveyor.components.core.monitoring.drift import DriftSettings
from conveyor.components.core.monitoring.drift_report import DriftOutputs, detect_drift
from conveyor.components.core.monitoring.prediction_drift import compare_predictions
from conveyor.components.core.monitoring.quality import QualitySettings, assess_quality
from conveyor.components.core.monitoring.verdict import (
    MONITORING_JOB,
    judge_monitoring,
    monitoring_gauges,
)
from conveyor.components.monitoring_verdict import monitoring_verdict
from tests.conftest import artifact
from tests.test_quality import binary_case

MODEL = "fraud"


def drift_summary(tmp_path: Path, shift: float) -> dict:
    """detect_drift's JSON summary of a current table whose ``amount`` moved by ``shift``
    in segment ``b`` only."""
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({
        "amount": rng.lognormal(3, 0.5, 5000), "age": rng.normal(40, 9, 5000),
        "segment": rng.choice(["a", "b"], 5000),
    })  # fmt: skip
    current = reference.sample(2000, random_state=1).reset_index(drop=True)
    current.loc[current["segment"] == "b", "amount"] *= shift
    reference.to_csv(tmp_path / "reference.csv", index=False)
    current.to_csv(tmp_path / "current.csv", index=False)
    summary = tmp_path / f"drift-{shift}.json"
    detect_drift(
        str(tmp_path / "reference.csv"), str(tmp_path / "current.csv"), DriftSettings(),
        "segment", (), DriftOutputs(summary=summary),
    )  # fmt: skip
    return json.loads(summary.read_text())


def prediction_summary(shift: float) -> dict:
    rng = np.random.default_rng(8)
    reference = pd.DataFrame({"conveyor.score": rng.beta(2, 5, 3000)})
    logged = pd.DataFrame({"conveyor.score": np.clip(rng.beta(2, 5, 2000) * shift, 0, 1)})
    for table in (reference, logged):
        table["conveyor.prediction"] = np.where(table["conveyor.score"] > 0.5, "1", "0")
    return compare_predictions(reference, logged, DriftSettings()).to_dict()


def quality_summary(tmp_path: Path, offline_accuracy: float | None) -> dict:
    """assess_quality's summary of a seeded log and labels, judged against an offline
    accuracy the online one either matches or falls far short of."""
    log, labels, joined = binary_case(tmp_path)
    online = (joined["label"].astype(str) == joined["conveyor.prediction"]).mean()
    offline = {"accuracy": online if offline_accuracy is None else offline_accuracy}
    settings = QualitySettings(segment="segment")
    return assess_quality(str(log), str(labels), MODEL, offline, settings).to_dict()


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("verdict")
    return {
        "calm_drift": drift_summary(root, 1.0),
        "drift": drift_summary(root, 1.8),
        "calm_prediction": prediction_summary(1.0),
        "prediction": prediction_summary(1.6),
        "calm_quality": quality_summary(root, None),
        "degraded": quality_summary(root, 0.99),
    }


def test_drift_and_degradation_retrain_prediction_drift_only_reports(summaries: dict) -> None:
    s = summaries
    assert s["drift"]["dataset_drifted"] and not s["calm_drift"]["dataset_drifted"]
    assert s["prediction"]["drifted"] and not s["calm_prediction"]["drifted"]
    assert s["degraded"]["degraded"] and not s["calm_quality"]["degraded"]

    calm = judge_monitoring(MODEL, s["calm_drift"], s["calm_prediction"], s["calm_quality"], True)
    assert (calm.triggers, calm.retraining) == ([], False)
    assert calm.reason.startswith("nothing to retrain: feature drift not found")

    answers = judge_monitoring(MODEL, s["calm_drift"], s["prediction"], s["calm_quality"], True)
    assert answers.finding("prediction drift").found and not answers.retraining

    both = judge_monitoring(MODEL, s["drift"], s["calm_prediction"], s["degraded"], True)
    assert both.triggers == ["feature drift", "quality degradation"] and both.retraining
    assert both.reason == "retraining on feature drift and quality degradation"
    off = judge_monitoring(MODEL, s["drift"], s["calm_prediction"], s["degraded"], False)
    assert not off.retraining and off.reason.endswith("found; retraining is off")
    assert "| quality degradation | **found** | yes |" in both.markdown()


def test_what_was_not_measured_is_neither_found_nor_pushed(summaries: dict) -> None:
    unlabelled = {"measured": False, "degraded": False, "reason": "no labels_uri was given"}
    unscored = {"measured": False, "drifted": False, "reason": "the log holds no scores"}
    verdict = judge_monitoring(MODEL, summaries["drift"], unscored, unlabelled, True)
    assert verdict.triggers == ["feature drift"]
    assert not verdict.finding("quality degradation").measured
    names = {gauge.name for gauge in monitoring_gauges(verdict, summaries["drift"], unscored,
                                                      unlabelled)}  # fmt: skip
    assert names == {"conveyor_drift_detected", "conveyor_drift_score",
                     "conveyor_retrain_triggered"}  # fmt: skip


def test_gauges_carry_every_drift_score_and_quality_overall_and_per_segment(
    summaries: dict,
) -> None:
    s = summaries
    verdict = judge_monitoring(MODEL, s["drift"], s["prediction"], s["degraded"], True)
    gauges = monitoring_gauges(verdict, s["drift"], s["prediction"], s["degraded"])
    scores = {
        (g.labels["column"], g.labels["segment"]): g.value
        for g in gauges
        if g.name == "conveyor_drift_score"
    }
    assert len(scores) == len(s["drift"]["columns"])
    assert scores[("amount", "b")] > scores[("amount", "a")]
    segments = {g.labels["segment"] for g in gauges if g.name == "conveyor_quality_metric"}
    assert segments == {"all", "a", "b", "c"}  # days and revisions are not series
    coverage = next(g for g in gauges if g.name == "conveyor_label_coverage")
    assert coverage.value == s["degraded"]["coverage"]["share"] and 0 < coverage.value < 1
    detected = {g.name: g.value for g in gauges if g.name.endswith(("_detected", "_degraded"))}
    assert detected == {
        "conveyor_drift_detected": 1.0,
        "conveyor_prediction_drift_detected": 1.0,
        "conveyor_quality_degraded": 1.0,
    }


def run_verdict(tmp_path: Path, drift: dict, prediction: dict, quality: dict, url: str) -> dict:
    """The monitoring_verdict component, its inputs and outputs on ``tmp_path``."""
    inputs = {}
    for name, content in (("drift", drift), ("prediction", prediction), ("quality", quality)):
        (tmp_path / name).write_text(json.dumps(content))
        inputs[f"{name}_summary"] = artifact(Artifact, tmp_path, name)
    summary = artifact(Artifact, tmp_path, "verdict.json")
    retraining = monitoring_verdict.python_func(
        model_name=MODEL, report=artifact(Markdown, tmp_path, "verdict.md"), summary=summary,
        pushgateway_url=url, **inputs,
    )  # fmt: skip
    written = json.loads(Path(summary.path).read_text())
    assert written["retraining"] is retraining
    return written


def pushed(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("job") == MONITORING_JOB and sample.name.startswith("conveyor_")
    }


def test_a_run_that_no_longer_finds_a_problem_clears_it_on_the_pushgateway(
    tmp_path: Path, summaries: dict, pushgateway: str
) -> None:
    s = summaries
    first = run_verdict(tmp_path, s["drift"], s["prediction"], s["degraded"], pushgateway)
    assert first["retraining"] and first["triggers"] == ["feature drift", "quality degradation"]
    series = pushed(pushgateway)
    flags = {name: value for (name, labels), value in series.items() if "column" not in dict(labels)
             and name.endswith(("_detected", "_degraded", "_triggered"))}  # fmt: skip
    assert flags == {
        "conveyor_drift_detected": 1.0, "conveyor_prediction_drift_detected": 1.0,
        "conveyor_quality_degraded": 1.0, "conveyor_retrain_triggered": 1.0,
    }  # fmt: skip
    assert any(name == "conveyor_quality_metric" for name, _ in series)

    unlabelled = {"measured": False, "degraded": False, "reason": "no labels_uri was given"}
    second = run_verdict(tmp_path, s["calm_drift"], s["calm_prediction"], unlabelled, pushgateway)
    assert not second["retraining"]
    names = {name for name, _ in pushed(pushgateway)}
    assert "conveyor_quality_degraded" not in names and "conveyor_quality_metric" not in names
    values = {name: value for (name, labels), value in pushed(pushgateway).items()
              if name in ("conveyor_drift_detected", "conveyor_prediction_drift_detected")}  # fmt: skip
    assert values == {"conveyor_drift_detected": 0.0, "conveyor_prediction_drift_detected": 0.0}


def test_an_unreachable_pushgateway_does_not_stop_the_retraining(
    tmp_path: Path, summaries: dict
) -> None:
    s = summaries
    written = run_verdict(
        tmp_path, s["drift"], s["prediction"], s["degraded"], "http://127.0.0.1:9"
    )
    assert written["retraining"] and written["pushed"] is False
    assert written["push_error"].startswith("Pushgateway at http://127.0.0.1:9 is unreachable")
    assert "Not pushed to the Pushgateway" in (tmp_path / "verdict.md").read_text()
