"""The ``conveyor`` command's own conventions: ``--version``, parameters checked against
the pipeline they are for, and a reader that goes away ending the command quietly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor.components.images import VERSION
from conveyor.pipelines.cli import main
from conveyor.pipelines.local import MonitoringSummary


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

    def run(arguments: dict, runs_dir: Path, terminal: object) -> MonitoringSummary:
        passed.update(arguments)
        return MonitoringSummary("r", "succeeded", "fine", False, [], False, str(tmp_path))

    monkeypatch.setattr("conveyor.pipelines.local.run_monitoring_locally", run)
    monitor = ["monitor", "--inputs", str(tmp_path / "in.csv"), "--model", "m"]
    # A training parameter is not a monitoring one: one line, nothing run.
    assert main([*monitor, "--param", "test_size=0.3", "--no-retrain"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("conveyor monitor: --param 'test_size': no such monitoring pipeline")
    assert "\n" not in error and not passed
    # The monitoring pipeline's own parameters, and --schema for the retraining.
    code = main([*monitor, "--param", "drift_share=0.3", "--schema", str(tmp_path / "schema.json")])
    assert code == 0, capsys.readouterr()
    assert passed["drift_share"] == 0.3
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
