"""The Pushgateway client against the real Pushgateway (Debian's prometheus-pushgateway), and
the monitoring alert rules of kserve/prometheus-rule.yaml firing in a real Prometheus that
scrapes it."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.monitoring.pushgateway import (
    Gauge,
    exposition,
    group_path,
    push_group,
)
from tests.conftest import ROOT, free_port, require_binary
from tests.serving_stack import PrometheusProcess

JOB = "conveyor_monitoring"
# A segment value the URL cannot carry plainly, and label values the text format escapes.
SEGMENT = "région/Île-de-France"
COLUMN = 'amount "net" \\ €'


def pushed_series(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every series on the Pushgateway's /metrics, read by prometheus_client's own parser:
    (name, labels) -> value, the Pushgateway's own metrics left out."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("job") == JOB and not sample.name.startswith("push_")
    }


def series(name: str, value: float, model: str, **labels: str) -> tuple[tuple, float]:
    return (name, frozenset({"job": JOB, "instance": "", "model": model, **labels}.items())), value


def first_run(model: str) -> list[Gauge]:
    """A run that found drift in one column of one segment, and a quality metric."""
    return [
        Gauge("conveyor_drift_detected", 1, {"model": model}, "1 when the inputs drifted"),
        Gauge("conveyor_drift_score", 0.41, {"column": COLUMN, "segment": SEGMENT, "test": "psi"}),
        Gauge("conveyor_drift_score", 0.02, {"column": COLUMN, "segment": "all", "test": "psi"}),
        Gauge("conveyor_quality_metric", 0.87, {"metric": "recall", "segment": "all"}),
    ]


def test_a_pushed_group_reads_back_with_its_values_and_labels(pushgateway: str) -> None:
    model = "fraud/v2 ünïcode"
    push_group(pushgateway, JOB, {"model": model}, first_run(model))

    assert pushed_series(pushgateway) == dict(
        [
            series("conveyor_drift_detected", 1.0, model),
            series("conveyor_drift_score", 0.41, model, column=COLUMN, segment=SEGMENT, test="psi"),
            series("conveyor_drift_score", 0.02, model, column=COLUMN, segment="all", test="psi"),
            series("conveyor_quality_metric", 0.87, model, metric="recall", segment="all"),
        ]
    )
    # The JSON API: one group, keyed by exactly the grouping labels, with help and type.
    (group,) = httpx.get(f"{pushgateway}/api/v1/metrics", timeout=10).json()["data"]
    assert group["labels"] == {"job": JOB, "model": model}
    assert group["last_push_successful"] is True
    detected = group["conveyor_drift_detected"]
    assert (detected["type"], detected["help"]) == ("GAUGE", "1 when the inputs drifted")
    scores = {m["labels"]["segment"]: m for m in group["conveyor_drift_score"]["metrics"]}
    assert scores[SEGMENT]["labels"]["column"] == COLUMN
    assert float(scores[SEGMENT]["value"]) == 0.41
    assert float(group["push_time_seconds"]["metrics"][0]["value"]) > 0


def test_a_second_push_replaces_its_models_group_only(pushgateway: str) -> None:
    push_group(pushgateway, JOB, {"model": "fraud"}, first_run("fraud"))
    push_group(pushgateway, JOB, {"model": "churn"}, first_run("churn"))
    # The next run for fraud: no drift, and no labels arrived, so no quality metric at all.
    cleared = [
        Gauge("conveyor_drift_detected", 0, {"model": "fraud"}),
        Gauge("conveyor_drift_score", 0.01, {"column": COLUMN, "segment": "all", "test": "psi"}),
    ]
    push_group(pushgateway, JOB, {"model": "fraud"}, cleared)

    pushed = pushed_series(pushgateway)
    assert {key: value for key, value in pushed.items() if ("model", "fraud") in key[1]} == dict(
        [
            series("conveyor_drift_detected", 0.0, "fraud"),
            series("conveyor_drift_score", 0.01, "fraud", column=COLUMN, segment="all", test="psi"),
        ]
    )
    churn = {key: value for key, value in pushed.items() if ("model", "churn") in key[1]}
    assert len(churn) == 4
    assert churn[series("conveyor_drift_detected", 0, "churn")[0]] == 1.0


@pytest.mark.parametrize(
    ("path", "gauge", "reason"),
    [
        ("/nope", Gauge("x", 1), "HTTP 404 404 page not found"),
        # A summary of the Pushgateway's own: the client cannot know, the Pushgateway refuses.
        ("", Gauge("go_gc_duration_seconds", 1), "HTTP 400 pushed metrics are invalid or inconsistent with existing metrics: gathered metric family go_gc_duration_seconds has type GAUGE but should have SUMMARY"),
    ],
)  # fmt: skip
def test_a_refused_push_is_one_line_with_the_gateways_reason(
    pushgateway: str, path: str, gauge: Gauge, reason: str
) -> None:
    with pytest.raises(ConveyorError) as raised:
        push_group(pushgateway + path, JOB, {"model": "m"}, [gauge])
    assert str(raised.value) == (
        f"Pushgateway at {pushgateway + path} refused the push of group "
        f"job='conveyor_monitoring',model='m': {reason}"
    )
    assert pushed_series(pushgateway) == {}  # the group holds no metric, only the failure time


def test_an_unreachable_pushgateway_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConveyorError, match=r"^Pushgateway at .* is unreachable: .*refused") as e:
        push_group(url, JOB, {"model": "m"}, [Gauge("x", 1)], timeout_s=2)
    assert "\n" not in str(e.value) and "(group job='conveyor_monitoring',model='m')" in str(
        e.value
    )


def test_the_group_path_follows_the_pushgateways_url_rules() -> None:
    def decoded(text: str) -> str:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()

    assert (
        group_path(JOB, {"model": "fraud-v2.1"})
        == "/metrics/job/conveyor_monitoring/model/fraud-v2.1"
    )
    assert group_path(JOB, {"model": ""}) == "/metrics/job/conveyor_monitoring/model@base64/="
    *_, label, value = group_path(JOB, {"model": SEGMENT}).split("/")
    assert label == "model@base64" and decoded(value) == SEGMENT
    assert "/" not in value and "=" not in value
    _, _, job_label, job_value, *_ = group_path("a/b", {}).split("/")
    assert job_label == "job@base64" and decoded(job_value) == "a/b"


def test_the_text_format_escapes_values_and_help() -> None:
    text = exposition(
        [
            Gauge("m", float("nan"), {"a": 'q"\\\nz'}, "line one\nback \\ slash"),
            Gauge("n", float("inf")),
            Gauge("m", -2, {"a": "b"}),
            Gauge("o", float("-inf")),
        ]
    )
    assert text == (
        "# HELP m line one\\nback \\\\ slash\n# TYPE m gauge\n"
        'm{a="q\\"\\\\\\nz"} NaN\nm{a="b"} -2.0\n'
        "# TYPE n gauge\nn +Inf\n# TYPE o gauge\no -Inf\n"
    )
    (family, *_) = text_string_to_metric_families(text)
    assert family.samples[0].labels == {"a": 'q"\\\nz'}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Gauge("1bad", 1), "gauge name '1bad': expected letters, digits, '_' or ':', not starting with a digit"),
        (lambda: Gauge("m", "1"), "gauge m: value '1' is not a number"),
        (lambda: Gauge("m", 1, {"bad-name": "x"}), "gauge m: label name 'bad-name' must be letters, digits or '_', not starting with a digit"),
        (lambda: Gauge("m", 1, {"__name": "x"}), "gauge m: label name '__name' starts with '__' (reserved)"),
        (lambda: Gauge("m", 1, {"a": 1}), "gauge m: label a=1 must be a string"),
        (lambda: exposition([Gauge("m", 1, {"a": "b"}), Gauge("m", 2, {"a": "b"})]), 'gauge m{a="b"}: given twice'),
        (lambda: exposition([Gauge("m", 1, {}, "x"), Gauge("m", 2, {"a": "b"}, "y")]), "gauge m: samples give different help texts ['x', 'y']"),
        (lambda: group_path("", {}), "Pushgateway job '': must be a non-empty string"),
        (lambda: group_path(JOB, {"job": "x"}), "Pushgateway grouping key: 'job' is given as the job, not a label"),
        (lambda: group_path(JOB, {"a b": "x"}), "Pushgateway grouping key: label name 'a b' must be letters, digits or '_', not starting with a digit"),
        (lambda: push_group("localhost:9091", JOB, {}, []), "Pushgateway URL 'localhost:9091' must start with http:// or https://"),
        (lambda: push_group("http://unused", JOB, {"model": "a"}, [Gauge("m", 1, {"model": "b"})]), "gauge m: label model='b' differs from the group's model='a'"),
        (lambda: push_group("http://unused", JOB, {}, [Gauge("push_time_seconds", 1)]), "gauge push_time_seconds: the Pushgateway sets it itself and would replace it"),
    ],
)  # fmt: skip
def test_bad_gauges_and_groups_are_one_line(make: Callable[[], Any], expected: str) -> None:
    with pytest.raises(ConveyorError) as raised:
        make()
    assert str(raised.value) == expected


def test_a_gauge_is_frozen_and_keeps_its_own_labels() -> None:
    labels = {"segment": "all"}
    gauge = Gauge("m", True, labels)
    labels["segment"] = "changed"
    assert (gauge.value, gauge.labels) == (1.0, {"segment": "all"})
    # Verdicts and scores straight from pandas and NumPy.
    assert Gauge("m", np.bool_(True)).value == 1.0 and Gauge("m", np.int64(3)).value == 3.0
    with pytest.raises(AttributeError):
        gauge.value = 2  # type: ignore[misc]


# --- A real Prometheus scraping the Pushgateway, with the real alert rules -----------------

MONITORING_ALERTS = {"ConveyorFeatureDrift", "ConveyorPredictionDrift", "ConveyorQualityDegraded"}


@pytest.fixture
def prometheus_on_pushgateway(pushgateway: str, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping the Pushgateway every second (honor_labels, as the rule file asks),
    evaluating kserve/prometheus-rule.yaml's groups, unchanged, every second."""
    require_binary("prometheus")
    (rule,) = [
        document
        for document in yaml.safe_load_all((ROOT / "kserve" / "prometheus-rule.yaml").read_text())
        if document and document["kind"] == "PrometheusRule"
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [pushgateway.removeprefix("http://")]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = PrometheusProcess(tmp_path / "prometheus.yml", tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def alerts(prometheus: str, model: str) -> dict[str, str]:
    """The active alerts on ``model``: alert name -> state (pending or firing)."""
    answer = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {
        a["labels"]["alertname"]: a["state"] for a in answer if a["labels"].get("model") == model
    }


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    return answer.json()["data"]["result"]


def verdicts(model: str, drift: int, prediction_drift: int, degraded: int | None) -> list[Gauge]:
    """One monitoring run's verdicts; ``degraded`` None: no labels, no quality pushed."""
    labels = {"model": model}
    gauges = [
        Gauge("conveyor_drift_detected", drift, labels),
        Gauge("conveyor_drift_score", 0.4 * drift, {"column": COLUMN, "segment": SEGMENT, "test": "psi"}),
        Gauge("conveyor_prediction_drift_detected", prediction_drift, labels),
    ]  # fmt: skip
    if degraded is not None:
        gauges.append(Gauge("conveyor_quality_degraded", degraded, labels))
    return gauges


def test_monitoring_alerts_fire_in_prometheus_and_clear_with_the_next_run(
    pushgateway: str, prometheus_on_pushgateway: str
) -> None:
    prometheus = prometheus_on_pushgateway
    push_group(pushgateway, JOB, {"model": "fraud"}, verdicts("fraud", 1, 1, 1))
    push_group(pushgateway, JOB, {"model": "healthy"}, verdicts("healthy", 0, 0, 0))

    # The rules have no "for": an alert is firing from the first evaluation that sees it.
    wait_until(
        lambda: alerts(prometheus, "fraud") == dict.fromkeys(MONITORING_ALERTS, "firing"),
        "fraud's drift, prediction drift and degradation alerts firing",
    )
    assert alerts(prometheus, "healthy") == {}
    # What monitoring pushed reached Prometheus with its labels, and so did the push time the
    # "has not run" alert reads (a fresh push: that alert stays silent).
    (score,) = query(prometheus, 'conveyor_drift_score{model="fraud"}')
    assert score["metric"]["segment"] == SEGMENT and score["metric"]["column"] == COLUMN
    assert score["metric"]["job"] == JOB and float(score["value"][1]) == 0.4
    (age,) = query(prometheus, f'time() - push_time_seconds{{job="{JOB}",model="fraud"}}')
    assert 0 <= float(age["value"][1]) < 3600

    # The next run finds nothing, and no labels came: the group is replaced, every alert clears.
    push_group(pushgateway, JOB, {"model": "fraud"}, verdicts("fraud", 0, 0, None))
    wait_until(lambda: alerts(prometheus, "fraud") == {}, "fraud's alerts cleared")
    assert query(prometheus, 'conveyor_quality_degraded{model="fraud"}') == []
