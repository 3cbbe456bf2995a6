"""The ``conveyor`` command's own conventions: ``--version``, parameters checked against
the pipeline they are for, every problem named on a line of its own, ``--label`` for the
label column, every flag's help with its default, and a reader that goes away ending the
command quietly."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor.components.images import VERSION
from conveyor.pipelines.cli import commands, main
from conveyor.pipelines.local import MonitoringSummary, RunSummary

ROOT = Path(__file__).resolve().parents[1]


def test_version_names_the_package_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"conveyor {VERSION}\n"


def test_monitor_params_are_checked_against_the_monitoring_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.csv").write_text("x\n1\n")
    (tmp_path / "schema.json").write_text("{}")
    passed = {}

    def run(
        arguments: dict, runs_dir: Path, terminal: object, parallelism: int
    ) -> MonitoringSummary:
        passed.update(arguments, parallelism=parallelism)
        return MonitoringSummary("r", "succeeded", "fine", False, [], False, str(tmp_path))

    monkeypatch.setattr("conveyor.pipelines.local.run_monitoring_locally", run)
    monitor = ["monitor", "--inputs", str(tmp_path / "in.csv"), "--model", "m"]
    # A training parameter is not a monitoring one: one line, nothing run.
    assert main([*monitor, "--param", "test_size=0.3", "--no-retrain"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("conveyor monitor: --param 'test_size': no such monitoring pipeline")
    assert "\n" not in error and not passed
    # The monitoring pipeline's own parameters, and --schema for the retraining.
    code = main([
        *monitor, "--param", "drift_share=0.3", "--schema", str(tmp_path / "schema.json"),
        "--monitoring-parallelism", "3",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert passed["drift_share"] == 0.3 and passed["parallelism"] == 3
    assert passed["schema_uri"] == str((tmp_path / "schema.json").resolve())


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # `conveyor ... | head -1`: the command stands in for one whose output outgrows the
    # pipe (a long dry run, a wide drift table), and the reader leaves after one line.
    script = textwrap.dedent("""
        import sys
        from conveyor.pipelines.cli import commands as cli

        def long_output(args):
            for line in range(200_000):
                print(f"line {line}: " + "x" * 60)
            return 0

        cli._compile = long_output
        sys.exit(cli.main(["compile"]))
    """)
    reader = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert reader.stdout.readline() == b"line 0: " + b"x" * 60 + b"\n"
    reader.stdout.close()
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """``conveyor``'s parser and each sub-command's, by the command line that reaches it."""
    parser = commands._parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"conveyor": parser} | {f"conveyor {n}": p for n, p in sub.choices.items()}


def test_every_option_has_help_and_shows_its_default_once() -> None:
    parsers = _parsers()
    assert {"conveyor run", "conveyor rollout", "conveyor drift", "conveyor submit"} <= set(parsers)
    unhelped, defaults = [], []
    for name, parser in parsers.items():
        for action in parser._actions:
            shown = action.option_strings and action.help is not argparse.SUPPRESS
            if not shown or isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                unhelped.append(f"{name} {action.option_strings[0]}")
            if commands._no_default(action.default) or action.default is argparse.SUPPRESS:
                continue
            text = parser._get_formatter()._expand_help(action)
            # Once: a hand-written "(default 60)" beside the formatter's would say it twice.
            said = re.findall(r"\(default\b|default:", text)
            if f"(default: {action.default})" not in text or len(said) != 1:
                defaults.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert unhelped == []
    assert defaults == []
    # The sub-commands' own help shows them; an option without a default says what its
    # absence means instead, never "(default: None)".
    help_text = parsers["conveyor run"].format_help()
    assert "(default: runs)" in help_text and "(default: None)" not in help_text
    assert "(default: 0)" in parsers["conveyor compile"].format_help()  # --gpus: 0 is shown
    assert "--target" not in help_text  # the deprecated alias works, unadvertised


def test_label_is_the_label_column_and_target_still_works_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "t.csv").write_text("x,y\n1,a\n")
    passed: list[dict] = []

    def run(arguments: dict, runs_dir: Path, terminal: object, parallelism: int) -> RunSummary:
        passed.append(arguments)
        return RunSummary("r", "succeeded", {}, True, "fine", "t", None, None, str(tmp_path))

    monkeypatch.setattr("conveyor.pipelines.local.run_training_locally", run)
    data = ["run", "--data", str(tmp_path / "t.csv"), "--runs-dir", str(tmp_path)]
    assert main([*data, "--label", "y"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([*data, "--target", "y"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "conveyor run: --target is deprecated for the label column; use --label"
    ]
    assert [arguments["target_column"] for arguments in passed] == ["y", "y"]
    assert main(data) == 2
    assert capsys.readouterr().err.strip() == (
        "conveyor run: --label (LABEL=) is required with --data: name the label column"
    )
    # The platform stays --target where a command delivers.
    with pytest.raises(SystemExit):
        main(["submit", "--target", "nowhere"])
    assert "invalid choice: 'nowhere'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--data", "t.csv"],
        ["monitor", "--inputs", "i.csv", "--model", "m", "--data", "t.csv"],
        ["validate", "--data", "t.csv", "--schema", "s.json", "--write-schema"],
    ],
)
def test_label_and_target_together_are_refused_not_the_last_one_kept(
    capsys: pytest.CaptureFixture, command: list[str]
) -> None:
    refused = (
        f"conveyor {command[0]}: --label and --target both name the label column; give --label only"
    )
    with pytest.raises(SystemExit) as exited:
        main([*command, "--label", "a", "--target", "b"])
    assert exited.value.code == 2 and capsys.readouterr().err.splitlines() == [refused]
    # --target first: its deprecation line, then the same refusal.
    with pytest.raises(SystemExit) as exited:
        main([*command, "--target", "b", "--label", "a"])
    assert exited.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == refused
    # Either one repeated is still one flag: the last value, as argparse keeps it.
    parser = _parsers()[f"conveyor {command[0]}"]
    assert parser.parse_args([*command[1:], "--label", "a", "--label", "b"]).label == "b"


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_job_label_is_a_vertex_job_label_and_label_still_works_with_a_warning(
    capsys: pytest.CaptureFixture, command: str
) -> None:
    parser = _parsers()[f"conveyor {command}"]
    vertex = ["--target", "vertex", *(["--cron", "0 6 * * *"] if command == "schedule" else [])]
    args = parser.parse_args([*vertex, "--job-label", "team=fraud", "--job-label", "env=dev"])
    assert args.job_label == ["team=fraud", "env=dev"]
    assert capsys.readouterr().err == ""
    args = parser.parse_args([*vertex, "--label", "team=fraud", "--job-label", "env=dev"])
    assert args.job_label == ["team=fraud", "env=dev"]
    assert capsys.readouterr().err.splitlines() == [
        f"conveyor {command}: --label is deprecated for Vertex job labels; use --job-label"
    ]
    # A fresh parse starts from no labels: the alias never adds to the shared default.
    assert parser.parse_args(vertex).job_label == []
    help_text = parser.format_help()
    assert "--job-label KEY=VALUE" in help_text and "--label" not in help_text


@pytest.mark.parametrize("module", ["conveyor.pipelines.cli", "conveyor.pipelines.cli.commands"])
def test_python_m_runs_the_command(module: str) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120
    )
    assert (ran.returncode, ran.stdout) == (0, f"conveyor {VERSION}\n"), ran.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (("run", "DATA=t.csv", "LABEL=y"), "conveyor run --data 't.csv' --label 'y'"),
        (("run", "DATA=t.csv", "TARGET=y"), "conveyor run --data 't.csv' --label 'y'"),
        (("validate", "DATA=t", "WRITE=1", "TARGET=y"), "--write-schema --label 'y'"),
        (("monitor", "INPUTS=i", "MODEL=m", "DATA=d", "LABEL=y"), "--data 'd' --label 'y'"),
    ],
)
def test_make_passes_label_or_its_older_name_target_as_label(
    variables: tuple[str, ...], expected: str
) -> None:
    printed = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "-o", ".venv/.installed", *variables],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert expected in " ".join(printed.split()) and "--target" not in printed


def test_bad_params_are_each_named_on_a_line_and_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed: list[dict] = []

    def run(arguments: dict, runs_dir: Path, terminal: object, parallelism: int) -> RunSummary:
        passed.append(arguments)
        return RunSummary("r", "succeeded", {}, True, "fine", "m", None, None, str(tmp_path))

    monkeypatch.setattr("conveyor.pipelines.local.run_training_locally", run)
    runs, known = ["--runs-dir", str(tmp_path)], _names("training")
    bad = ["seed=many", "test_size=0.2", "test_size=0.3", "estimater=x", "canary_policy={a: [1,"]
    assert main(["run", *runs, *(f"--param={pair}" for pair in bad), "--param", "seed"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "conveyor run: --param 'seed': must be a whole number, not 'many'",
        "conveyor run: --param 'test_size': given more than once",
        "conveyor run: --param 'estimater': no such training pipeline parameter; known: "
        + ", ".join(known),
        "conveyor run: --param 'canary_policy': '{a: [1,' is not valid YAML",
        "conveyor run: --param 'seed': expected NAME=VALUE",
    ]
    assert passed == [] and "model_store_uri" in known
    # A text parameter takes VALUE as written; a number may be written as YAML 1.1 reads text.
    good = ["serving_cpu=1", "test_size=2e-1", "rollout=true", "hyperparameters={C: 2}"]
    assert main(["run", *runs, *(f"--param={pair}" for pair in good)]) == 0, capsys.readouterr()
    assert {name: passed[0][name] for name in ("serving_cpu", "test_size", "rollout")} == {
        "serving_cpu": "1",
        "test_size": 0.2,
        "rollout": True,
    }
    assert passed[0]["hyperparameters"] == {"C": 2}


def test_bad_monitor_params_are_each_named_on_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "in.csv").write_text("x\n1\n")
    monitor = ["monitor", "--inputs", str(tmp_path / "in.csv"), "--model", "m"]
    pairs = ["--param", "drift_share=high", "--param", "drift_share=0.3", "--param", "seed=1"]
    assert main([*monitor, *pairs, "--no-retrain"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "conveyor monitor: --param 'drift_share': must be a number, not 'high'",
        "conveyor monitor: --param 'drift_share': given more than once",
        "conveyor monitor: --param 'seed': no such monitoring pipeline parameter; known: "
        + ", ".join(_names("monitoring")),
    ]


def _names(pipeline: str) -> list[str]:
    from conveyor.pipelines.definitions.compile import PIPELINES
    from conveyor.pipelines.definitions.targets import Target

    return list(PIPELINES[pipeline].build(Target("kubeflow")).component_spec.inputs)


def test_check_names_every_problem_of_every_file_in_one_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "monitoring").mkdir()
    judged = "model_store_uri: gs://b/m\nprometheus_url: http://prometheus:9090\n"
    (tmp_path / "good.yaml").write_text(judged)
    # Unknown, mistyped, and a setting deploy refuses: all three at once, not one per run.
    (tmp_path / "three.yaml").write_text(
        judged + "estimater: x\nseed: many\ncanary_steps: '50,10'\n"
    )
    (tmp_path / "broken.yaml").write_text("seed: [1,\n")
    (tmp_path / "monitoring" / "dev.yaml").write_text("model_store_uri: /m\ndrift_share: high\n")
    assert main(["check", "--configs", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[1:] == [
        f"{tmp_path / 'broken.yaml'}: 1 problem(s)",
        f"{tmp_path / 'good.yaml'}: ok",
        f"{tmp_path / 'three.yaml'}: 3 problem(s)",
        f"{tmp_path / 'monitoring' / 'dev.yaml'}: 3 problem(s)",
        "7 problem(s) in 3 of 4 parameter file(s)",
    ]
    three, monitoring = tmp_path / "three.yaml", tmp_path / "monitoring" / "dev.yaml"
    assert err.splitlines()[1:] == [
        f"{three}: 'estimater' is not a parameter of the pipeline",
        f"{three}: 'seed' must be a whole number, not 'many'",
        f"{three}: canary steps [50, 10] must increase",
        f"{monitoring}: 'inputs_uri' is required (text)",
        f"{monitoring}: 'drift_share' must be a number, not 'high'",
        # A retraining's deploy would roll out (the default) with nothing to judge it by.
        f"{monitoring}: no Prometheus URL to judge the canary with (prometheus_url, --prometheus): give one, or set analysis: none in the canary policy to roll out unjudged",
    ]
    assert err.splitlines()[0].startswith(f"{tmp_path / 'broken.yaml'}: not valid YAML")


def test_a_whole_number_given_for_a_float_parameter_is_taken_as_a_float() -> None:
    """KFP refuses an int argument for a float input; ``min_improvement=-1`` means -1.0."""
    from conveyor.pipelines.definitions.parameters import parse_param_options
    from conveyor.pipelines.definitions.targets import Target
    from conveyor.pipelines.definitions.training import build_training_pipeline

    inputs = build_training_pipeline(Target("kubeflow")).component_spec.inputs
    parsed = parse_param_options(["min_improvement=-1", "seed=3"], inputs, "training")
    assert parsed == {"min_improvement": -1.0, "seed": 3}
    assert isinstance(parsed["min_improvement"], float) and isinstance(parsed["seed"], int)
