"""Tuning: the search space, the trials' cross-validation, the selection, and the pipeline's
loop of trials through kfp.local and in the compiled YAML."""

from __future__ import annotations

import builtins
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conveyor.components.core.data.tables import split_table
from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.training import tracking
from conveyor.components.core.training.metrics import score
from conveyor.components.core.training.trainer import fit_model
from conveyor.components.core.training.tuning import (
    UNTUNED,
    Dimension,
    TrialResult,
    TrialSettings,
    best_trial,
    cross_validate,
    plan_trials,
    run_trial,
    select_trials,
    selection_report,
    start_tuning,
)
from tests.churn import churn_table
from tests.test_compile import compile_to, executors, pipeline_spec
from tests.test_local_run import conveyor_run


def hyperparameters(trials: list[dict]) -> list[dict]:
    return [trial["hyperparameters"] for trial in trials]


# --- the search space ---------------------------------------------------------------------------


def test_without_a_search_space_the_one_trial_keeps_the_hyperparameters() -> None:
    assert plan_trials("xgboost", {"max_depth": 3}, {}, "random", 8, 0) == [
        {"trial": UNTUNED, "hyperparameters": {"max_depth": 3}}
    ]


def test_a_grid_tries_every_combination_over_the_given_hyperparameters() -> None:
    trials = plan_trials(
        "random_forest", {"n_estimators": 20, "max_depth": 9},
        {"max_depth": [2, 4], "max_leaf_nodes": [5, 10, 20]}, "grid", 6, 0,
    )  # fmt: skip
    assert [trial["trial"] for trial in trials] == list(range(6))
    assert hyperparameters(trials)[0] == {"n_estimators": 20, "max_depth": 2, "max_leaf_nodes": 5}
    assert {(h["max_depth"], h["max_leaf_nodes"]) for h in hyperparameters(trials)} == {
        (depth, leaves) for depth in (2, 4) for leaves in (5, 10, 20)
    }


def test_a_random_search_is_seeded_distinct_and_within_its_bounds() -> None:
    space = {
        "learning_rate": {"log_range": [0.01, 0.3]},
        "max_depth": {"int_range": [2, 8]},
        "subsample": {"range": [0.5, 1.0]},
    }
    trials = hyperparameters(plan_trials("xgboost", {}, space, "random", 12, seed=3))
    assert trials == hyperparameters(plan_trials("xgboost", {}, space, "random", 12, seed=3))
    assert trials != hyperparameters(plan_trials("xgboost", {}, space, "random", 12, seed=4))
    assert len(trials) == 12 and len({json.dumps(t, sort_keys=True) for t in trials}) == 12
    for trial in trials:
        assert 0.01 <= trial["learning_rate"] <= 0.3 and 0.5 <= trial["subsample"] <= 1.0
        assert isinstance(trial["max_depth"], int) and 2 <= trial["max_depth"] <= 8


def test_a_value_given_twice_is_tried_once() -> None:
    trials = plan_trials("xgboost", {}, {"max_depth": [3, 3, 3.0, 5]}, "grid", 2, 0)
    assert [trial["hyperparameters"]["max_depth"] for trial in trials] == [3, 5]


@pytest.mark.parametrize(
    ("scoring", "message"),
    [
        (("f2", "auto", 3), "unknown metric(s) ['f2']"),
        (("roc_auc", "up", 3), "metric_direction must be auto, maximize or minimize"),
        (("roc_auc", "auto", 1), "tuning_folds 1: expected 2 to 20"),
    ],
)
def test_how_trials_are_scored_is_checked_before_any_runs(scoring: tuple, message: str) -> None:
    with pytest.raises(ConveyorError) as raised:
        plan_trials("xgboost", {}, {"max_depth": [3]}, "grid", 4, 0, scoring)
    assert message in str(raised.value)


def test_a_metric_the_target_lacks_fails_the_trial_in_one_line(species: pd.DataFrame) -> None:
    def fit(rows: pd.DataFrame, params: dict):
        return fit_model(rows, "species", "logistic_regression", params, 0)

    with pytest.raises(ConveyorError, match="false_positive_rate is not measured for this target"):
        cross_validate(species, "species", {}, "false_positive_rate", 3, 0, fit)


def test_a_random_search_of_a_small_space_tries_each_combination_once() -> None:
    trials = plan_trials("lightgbm", {}, {"num_leaves": [7, 15]}, "random", 8, 0)
    assert sorted(h["num_leaves"] for h in hyperparameters(trials)) == [7, 15]


def test_a_log_range_draws_uniformly_in_the_logarithm() -> None:
    """Half the draws fall under the geometric middle; 2,000 draws put the share within
    0.5 +- 0.034 (3 standard deviations) but for 0.3 % of seeds."""
    dimension = Dimension.from_spec("learning_rate", {"log_range": [0.001, 1.0]})
    middle = math.sqrt(0.001 * 1.0)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        share = np.mean([dimension.draw(rng) < middle for _ in range(2000)])
        assert abs(share - 0.5) < 0.034, (seed, share)


@pytest.mark.parametrize(
    ("estimator", "space", "method", "max_trials", "message"),
    [
        ("random_forest", {"depth": [2, 3]}, "random", 4,
         "search_space: hyperparameters ['depth'] are not accepted by 'random_forest'"),
        ("xgboost", {"objective": ["binary:hinge"]}, "random", 4,
         "search_space: hyperparameter 'objective' of 'xgboost' is Conveyor's to set"),
        ("xgboost", {"max_depth": []}, "random", 4, "search_space.max_depth: an empty list"),
        ("xgboost", {"max_depth": {"range": [8, 2]}}, "random", 4,
         "search_space.max_depth.range: expected [low, high], low <= high"),
        ("xgboost", {"eta": {"log_range": [0, 1]}}, "random", 4,
         "search_space.eta.log_range: the bounds must be above 0"),
        ("xgboost", {"max_depth": {"int_range": [2, 8.5]}}, "random", 4,
         "search_space.max_depth.int_range: expected whole numbers"),
        ("xgboost", {"max_depth": {"between": [2, 8]}}, "random", 4,
         "search_space.max_depth: expected a list of values or one of {range: [low, high]}"),
        ("xgboost", {"max_depth": {"int_range": [2, 8]}}, "grid", 4,
         "search grid: 'max_depth' is a range; a grid tries lists of values"),
        ("xgboost", {"max_depth": [2, 4, 6], "subsample": [0.5, 1.0]}, "grid", 4,
         "search grid: 6 combinations, more than max_trials 4"),
        ("xgboost", {"max_depth": [2]}, "bayesian", 4, "search 'bayesian': expected one of"),
        ("xgboost", {"max_depth": [2]}, "random", 0, "max_trials 0: expected 1 to 200"),
        ("xgboost", {"max_depth": [2]}, "random", 10**6, "max_trials 1000000: expected 1 to 200"),
        # Counted, not listed: 10**40 combinations would never be built.
        ("xgboost", {f"p{i}": list(range(10)) for i in range(40)}, "grid", 8,
         "search grid: 10000000000000000000000000000000000000000 combinations, more than"),
        ("catboost", {"depth": [2]}, "random", 4, "unknown estimator 'catboost'"),
        # KFP passes 1 as 1.0, which min_samples_leaf reads as a share: refused here, not in
        # every trial's pod.
        ("random_forest", {"min_samples_leaf": [1, 5]}, "grid", 4,
         "search_space: trial 0: The 'min_samples_leaf' parameter of RandomForestClassifier"),
        ("xgboost", {"max_depth": {"int_range": [0, 2**63]}}, "random", 4,
         "search_space.max_depth.int_range: expected whole numbers under 2**53"),
    ],
)  # fmt: skip
def test_a_bad_search_fails_in_one_line_naming_what_is_wrong(
    estimator: str, space: dict, method: str, max_trials: int, message: str
) -> None:
    with pytest.raises(ConveyorError) as raised:
        plan_trials(estimator, {}, space, method, max_trials, 0)
    assert message in str(raised.value) and "\n" not in str(raised.value)


# --- scoring and choosing -----------------------------------------------------------------------


def test_cross_validation_fits_on_the_other_folds_and_scores_the_held_out_one() -> None:
    table = churn_table(rows=300, seed=2).drop(columns=["support_notes"])
    seen: list[set] = []

    def fit(rows: pd.DataFrame, params: dict):
        seen.append(set(rows["customer_id"]))
        return fit_model(rows, "churned", "logistic_regression", params, 0)

    folds = cross_validate(table, "churned", {}, "roc_auc", 3, 0, fit)
    assert len(folds) == 3 and all(0.5 < score <= 1 for score in folds)
    everyone = set(table["customer_id"])
    held_out = [everyone - fitted for fitted in seen]
    assert set().union(*held_out) == everyone and sum(map(len, held_out)) == len(everyone)


def test_cross_validation_refuses_a_class_too_rare_for_its_folds() -> None:
    table = churn_table(rows=40, seed=2)
    table["churned"] = ["yes", "yes"] + ["no"] * (len(table) - 2)
    with pytest.raises(ConveyorError, match="3 folds, the rarest class has 2 training rows"):
        cross_validate(table, "churned", {}, "roc_auc", 3, 0, None)


def result(trial: int, *folds: float) -> TrialResult:
    return TrialResult(trial, {"max_depth": trial}, "roc_auc", folds)


def test_the_best_mean_is_chosen_the_earliest_of_equals_and_never_a_nan() -> None:
    trials = [result(0, 0.8, 0.8), result(1, 0.9, 0.7), result(2, 0.85, 0.85), result(3, math.nan)]
    assert best_trial(trials, 1).trial == 2
    assert best_trial(trials, -1).trial == 0  # lower is better: 0.8 ties 1's 0.8, 0 is earlier
    with pytest.raises(ConveyorError, match="none of the 1 trials has a finite score"):
        best_trial([result(0, math.nan)], 1)


def test_the_report_lists_every_trial_inertly_and_marks_the_chosen_one() -> None:
    hostile = TrialResult(1, {"max_depth": "<script>|"}, "roc_auc", (0.9, 0.8))
    trials = [result(0, 0.7, 0.6), hostile]
    report = selection_report(trials, hostile, 1)
    assert "| **1** (chosen) | &lt;script&gt;\\| | 0.8500 | 0.0707 |" in report
    assert "| 0 | 0 | 0.6500 | 0.0707 |" in report and "<script>" not in report


# --- through MLflow -----------------------------------------------------------------------------


def test_trials_are_child_runs_and_the_selection_is_the_best_recorded_one(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    train, _ = split_table(churn_table(rows=400, seed=5), "churned", 0.25, 0, "churn")
    train.to_parquet(tmp_path / "train.parquet")
    client = tracking.connect(mlflow_server)
    parent = tracking.start_tuning_run(client, model_name, {"search": "grid"}, {})
    planned = plan_trials("logistic_regression", {}, {"C": [0.001, 1.0, 100.0]}, "grid", 3, 0)
    settings = TrialSettings(
        tmp_path / "train.parquet", "churned", "logistic_regression", "roc_auc"
    )
    results = [
        run_trial(settings, {**trial, "tuning_run_id": parent}, mlflow_server).to_dict()
        for trial in planned
    ]
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent}'",
    )
    assert len(children) == 3
    recorded = {run.data.params["C"]: run.data.metrics["cv_roc_auc"] for run in children}
    selection = select_trials(results, "roc_auc", "auto", mlflow_server)
    best_c = max(recorded, key=recorded.get)
    assert str(selection.hyperparameters["C"]) == best_c
    assert selection.chosen.mean == pytest.approx(recorded[best_c])
    finished = client.get_run(parent)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["chosen_run_id"] == selection.chosen.run_id
    table = Path(client.download_artifacts(parent, "tuning.md", str(tmp_path))).read_text()
    assert table.count("(chosen)") == 1 and f"| **{selection.chosen.trial}** (chosen) |" in table


def test_a_trial_the_estimator_refuses_is_reported_never_chosen_and_all_failing_ends_the_run(
    tmp_path: Path, mlflow_server: str, model_name: str
) -> None:
    """XGBoost checks its values only when it fits: a trial it refuses fails alone."""
    train, _ = split_table(churn_table(rows=300, seed=5), "churned", 0.25, 0, "churn")
    train.to_parquet(tmp_path / "train.parquet")
    settings = TrialSettings(tmp_path / "train.parquet", "churned", "xgboost", "roc_auc")
    client = tracking.connect(mlflow_server)

    def tuned(space: dict) -> list[dict]:
        planned = plan_trials("xgboost", {"n_estimators": 10}, space, "grid", 4, 0)
        trials = start_tuning(planned, mlflow_server, model_name, "run-1")
        return [run_trial(settings, trial, mlflow_server).to_dict() for trial in trials]

    results = tuned({"max_depth": [3, -2]})
    selection = select_trials(results, "roc_auc", "auto", mlflow_server)
    assert selection.chosen.trial == 0 and selection.hyperparameters["max_depth"] == 3
    assert "| 1 | -2 | 10 | failed: could not train 'xgboost': " in selection.report
    failed = client.get_run(results[1]["run_id"])
    assert failed.info.status == "FAILED" and "could not train" in failed.data.tags["error"]

    results = tuned({"max_depth": [-1, -2]})
    with pytest.raises(ConveyorError, match="none of the 2 trials has a finite score: trial 0: "):
        select_trials(results, "roc_auc", "auto", mlflow_server)
    assert client.get_run(results[0]["tuning_run_id"]).info.status == "FAILED"


def test_scikit_learn_values_are_checked_before_any_trial_runs() -> None:
    with pytest.raises(ConveyorError, match="search_space: trial 1: The 'max_depth' parameter"):
        plan_trials("random_forest", {}, {"max_depth": [2, -1]}, "grid", 4, 0)


def test_the_untuned_trial_does_no_work_and_logs_nothing(tmp_path: Path) -> None:
    settings = TrialSettings(tmp_path / "absent.parquet", "y", "xgboost", "roc_auc")
    untuned = {"trial": UNTUNED, "hyperparameters": {"max_depth": 3}}
    done = run_trial(settings, untuned, "http://127.0.0.1:9")
    assert done.folds == () and done.run_id == ""
    selection = select_trials([done.to_dict()], "roc_auc", "auto", "http://127.0.0.1:9")
    assert selection.hyperparameters == {"max_depth": 3} and selection.chosen is None


# --- the pipeline -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
def test_the_compiled_loop_of_trials_has_the_parallelism_it_was_compiled_with(
    tmp_path: Path, target: str
) -> None:
    build = compile_to(tmp_path, "--tuning-parallelism", "3", "--gpus", "1")
    spec = pipeline_spec(build / f"training.{target}.yaml")
    loops = {
        name: task
        for name, task in spec.root.dag.tasks.items()
        if task.WhichOneof("iterator") == "parameter_iterator"
    }
    (loop,) = loops.values()
    assert loop.iterator_policy.parallelism_limit == 3
    assert "tune-trial" in spec.components[loop.component_ref.name].dag.tasks
    # A trial trains as train does: on the GPU, when the pipeline has one.
    trial = executors(build / f"training.{target}.yaml")["tune-trial"]
    assert trial.resources.accelerator.resource_count == "1"
    assert trial.image.rpartition("/")[2].startswith("conveyor-gpu:")


@pytest.mark.slow
def test_a_local_run_tunes_four_trials_two_at_a_time_and_trains_the_best(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    churn_table(rows=500, seed=9).to_csv(tmp_path / "churn.csv", index=False)
    space = {"C": [0.01, 0.1, 1.0, 10.0]}
    real_print, handlers = builtins.print, logging.getLogger().handlers[:]
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--data", str(tmp_path / "churn.csv"), "--label", "churned",
        "--param", f"search_space={json.dumps(space)}", "--param", "search=grid",
        "--param", "max_trials=4", "--param", "id_columns=[customer_id]",
        "--param", "metric_floors={}",  # registered whatever the chosen trial scores
        "--tuning-parallelism", "2",
    )  # fmt: skip
    assert code == 0, printed
    # kfp.local's side-by-side tasks swap builtins.print and the root logger's handlers in
    # and out; the run puts both back.
    assert builtins.print is real_print and logging.getLogger().handlers == handlers
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (experiment,) = client.search_experiments(filter_string="name = 'churn'")
    (tuning,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'tuning'")
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{tuning.info.run_id}'"
    )
    assert sorted(float(run.data.params["C"]) for run in trials) == space["C"]
    best = max(trials, key=lambda run: run.data.metrics["cv_roc_auc"])
    assert tuning.data.tags["chosen_run_id"] == best.info.run_id
    trained = client.get_run(client.get_model_version("churn", "1").run_id)
    assert float(trained.data.params["C"]) == float(best.data.params["C"])
    report = next((tmp_path / "runs").rglob("select-trial/report")).read_text()
    assert "(chosen)" in report and report.count("\n| ") == 6  # header, rule, 4 trials


@pytest.mark.slow
def test_a_search_space_the_estimator_cannot_take_fails_the_run_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, summary, printed = conveyor_run(
        capsys, tmp_path / "runs", "--estimator", "random_forest",
        "--param", "search_space={depth: [2, 4]}",
    )  # fmt: skip
    assert code == 1 and summary["failed_step"] == "plan-trials", printed
    first_line, *_ = summary["reason"].splitlines()
    assert first_line.startswith(
        "plan_trials: search_space: hyperparameters ['depth'] are not accepted by 'random_forest'"
    )
    assert summary["steps"]["train"] == "skipped" and summary["model_version"] is None


def interaction_table(rows: int, seed: int) -> pd.DataFrame:
    """A label from an interaction and a threshold: shallow trees cannot learn it all."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    logit = 1.5 * x[:, 0] * x[:, 1] + np.where(x[:, 2] > 0.5, 1.5, -0.5) + 0.3 * x[:, 3]
    label = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(label=label)


@pytest.mark.slow
def test_the_chosen_trial_is_close_to_the_best_on_fresh_data_in_a_seeded_simulation() -> None:
    """Cross-validation on 600 training rows picks among max_depth 1, 2, 4 and 8; each
    trial's model, fitted on the whole split, is then scored on 5,000 fresh rows. The
    selection's regret (the best fresh ROC-AUC less the chosen one's) is what noise costs."""
    regrets = []
    for seed in range(12):
        train = interaction_table(600, seed)
        fresh = interaction_table(5000, 1000 + seed)
        planned = plan_trials("random_forest", {"n_estimators": 40}, {"max_depth": [1, 2, 4, 8]},
                              "grid", 4, seed)  # fmt: skip

        def fit(rows: pd.DataFrame, params: dict, seed: int = seed):
            return fit_model(rows, "label", "random_forest", params, seed)

        results = [
            TrialResult(t["trial"], t["hyperparameters"], "roc_auc",
                        cross_validate(train, "label", t["hyperparameters"],
                                       "roc_auc", 3, seed, fit))
            for t in planned
        ]  # fmt: skip
        chosen = best_trial(results, 1)
        on_fresh = {
            r.trial: score(fit(train, r.hyperparameters).pipeline, fresh, "label", "yes").metrics[
                "roc_auc"
            ]
            for r in results
        }
        regrets.append(max(on_fresh.values()) - on_fresh[chosen.trial])
    print(f"regret: mean {np.mean(regrets):.4f}, max {max(regrets):.4f}, "
          f"best chosen in {sum(r == 0 for r in regrets)} of {len(regrets)}")  # fmt: skip
    assert np.mean(regrets) < 0.01 and max(regrets) < 0.03
