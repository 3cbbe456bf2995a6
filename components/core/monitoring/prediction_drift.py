"""Prediction drift: did what the model says move, whether or not labels have arrived?

A classifier's logged scores (``conveyor.score``) and predicted classes
(``conveyor.prediction``), or a regressor's predicted values (``conveyor.predicted_value``),
are compared with the champion's on its evaluation split (``scores.parquet``, recorded by
train) with the statistics of feature drift (``monitoring.drift.compare_tables``, on a
one-column table each: the score and the value are numeric, the predicted class
categorical), over all rows and, with a segment column, within each segment. Any drifted
comparison is prediction drift. A log written before scores were logged, or a champion
trained before they were recorded, cannot be measured: the result says so, and is not drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from conveyor.components.core.errors import ConveyorError
from conveyor.components.core.markdown import table
from conveyor.components.core.monitoring.drift import ColumnDrift, DriftSettings, compare_tables
from conveyor.components.core.serving.payload_log import PREDICTED_VALUE
from conveyor.components.core.serving.payload_log import PREDICTION as PREDICTION_COLUMN
from conveyor.components.core.serving.payload_log import SCORE as SCORE_COLUMN

__all__ = ["OUTPUTS", "OutputDrift", "PredictionDrift", "compare_predictions"]

# The logged column of each output compared, and the name results give it: a classifier's
# score and class, or a regressor's value.
CLASSIFIER_OUTPUTS = {SCORE_COLUMN: "score", PREDICTION_COLUMN: "class"}
REGRESSOR_OUTPUTS = {PREDICTED_VALUE: "value"}
OUTPUTS = {**CLASSIFIER_OUTPUTS, **REGRESSOR_OUTPUTS}
_NUMERIC = (SCORE_COLUMN, PREDICTED_VALUE)
_ALL = "all"


@dataclass(frozen=True)
class OutputDrift:
    """One comparison: an output (``score``, ``class`` or ``value``) in a segment (``all``:
    every row).

    Attributes:
        output: ``score`` (the logged score), ``class`` (the predicted class's shares) or
            ``value`` (a regressor's predicted value).
        segment: ``all``, or the segment's value.
        test: The deciding test (``DriftSettings.deciding_test``).
        value: Its statistic or p-value.
        drifted: Whether it is drift, by the settings.
        reference_rows: Rows of the evaluation split compared.
        current_rows: Logged rows compared.
    """

    output: str
    segment: str
    test: str
    value: float
    drifted: bool
    reference_rows: int
    current_rows: int

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS.values():
            raise ConveyorError(
                f"prediction drift output {self.output!r}: expected score, class or value"
            )

    @property
    def metric_test(self) -> str:
        """The ``test`` label of the pushed gauge: output and test, ``score_psi``."""
        return f"{self.output}_{self.test}"


@dataclass(frozen=True)
class PredictionDrift:
    """Whether what the model says moved; checks itself.

    Attributes:
        measured: False when nothing could be compared (no logged scores or predictions,
            or no reference scores); ``reason`` says why, and ``drifted`` is False.
        drifted: Whether any comparison drifted.
        reason: The verdict in one sentence.
        results: Every comparison, over all rows first, then per segment.
        skipped: What was not compared, and why (small or new segments, unlogged rows).
    """

    measured: bool
    drifted: bool
    reason: str
    results: tuple[OutputDrift, ...] = ()
    skipped: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.drifted != any(result.drifted for result in self.results):
            raise ConveyorError("prediction drift: the verdict must follow its comparisons")
        if not self.measured and self.results:
            raise ConveyorError("prediction drift: an unmeasured result holds comparisons")

    @property
    def drifted_segments(self) -> list[str]:
        """Where an output drifted: ``all`` first, then segment values, each once."""
        return list(dict.fromkeys(r.segment for r in self.results if r.drifted))

    def scores(self) -> dict[str, dict[str, float]]:
        """Segment (``all`` for every row) -> ``metric_test`` -> value: what is pushed."""
        scores: dict[str, dict[str, float]] = {}
        for result in self.results:
            scores.setdefault(result.segment, {})[result.metric_test] = result.value
        return scores

    def to_dict(self) -> dict[str, Any]:
        return {
            "measured": self.measured,
            "drifted": self.drifted,
            "reason": self.reason,
            "drifted_segments": self.drifted_segments,
            "results": [vars(result) for result in self.results],
            "skipped": list(self.skipped),
        }

    def markdown(self) -> str:
        """A section of the monitoring report: the verdict, a row per comparison, and what
        was not compared."""
        parts = ["## Prediction drift", f"**{self.reason}.**"]
        if self.results:
            rows = [
                (
                    r.output, r.segment, r.test, f"{r.value:.4g}",
                    f"{r.reference_rows:,} → {r.current_rows:,}",
                    "**drift**" if r.drifted else "ok",
                )
                for r in self.results
            ]  # fmt: skip
            header = ("output", "segment", "test", "value", "rows (reference → log)", "verdict")
            parts.append("\n".join(table(header, rows)))
        if self.skipped:
            parts.append("Not compared:\n\n" + "\n".join(f"- {line}" for line in self.skipped))
        return "\n\n".join(parts) + "\n"


def compare_predictions(
    reference: pd.DataFrame | None,
    logged: pd.DataFrame,
    settings: DriftSettings,
    segment: str | None = None,
) -> PredictionDrift:
    """Compares the logged scores and predicted classes (a regressor's predicted values)
    with the champion's on its evaluation split, over all rows and within each value of
    ``segment``.

    Args:
        reference: The champion's ``scores.parquet`` (``importance.read_reference_scores``);
            None when its training recorded none.
        logged: The payload log's rows: ``conveyor.score`` and ``conveyor.prediction``, or
            ``conveyor.predicted_value``, and, with ``segment``, that column. Rows without
            them (logged before scores were) are left out and counted.
        settings: Thresholds, deciding tests and segment sizes, as feature drift's.
        segment: Also compare within each value of this input column.

    Raises:
        ConveyorError: ``segment`` is in neither table or one only, a logged score is
            not a number, or the log is a regressor's and the reference a classifier's (or
            the reverse).
    """
    if reference is None:
        return _unmeasured(
            "Prediction drift could not be measured: the champion's training recorded no scores on "
            "its evaluation split (it predates them; retrain it)"
        )
    if segment:
        _check_segment(reference, logged, segment)
    outputs = _outputs(reference, logged)
    results: list[OutputDrift] = []
    skipped: list[str] = []
    for column, output in outputs.items():
        current = _with_values(logged, column, segment)
        if current is None:
            skipped.append(f"{output}: the log holds none (written before it was logged)")
            continue
        if len(current) < len(logged):
            skipped.append(f"{output}: {len(logged) - len(current):,} logged rows have none")
        expected = _with_values(reference, column, segment)
        if expected is None:
            skipped.append(f"{output}: the reference holds none (a model without probabilities)")
            continue
        report = compare_tables(expected, current, settings, segment)
        results += [_result(output, drift) for drift in report.columns]
        skipped += [f"{output}: {line}" for line in report.skipped]
    if not results:
        return _unmeasured(
            "Prediction drift could not be measured: the log holds no scores or predicted classes "
            "(written before Conveyor logged them)",
            skipped,
        )
    return PredictionDrift(
        True, any(r.drifted for r in results), _reason(results), tuple(results), tuple(skipped)
    )


def _outputs(reference: pd.DataFrame, logged: pd.DataFrame) -> dict[str, str]:
    """The outputs the reference's model gives, which the log must be of."""
    regressor = PREDICTED_VALUE in reference.columns
    logged_regressor = PREDICTED_VALUE in logged.columns
    if logged_regressor != regressor and (logged_regressor or SCORE_COLUMN in logged.columns):
        kinds = ("a regressor's", "a classifier's")
        raise ConveyorError(
            f"the log is {kinds[not logged_regressor]} and the champion's reference scores "
            f"{kinds[not regressor]}: prediction drift compares one model's outputs"
        )
    return REGRESSOR_OUTPUTS if regressor else CLASSIFIER_OUTPUTS


def _unmeasured(reason: str, skipped: list[str] | None = None) -> PredictionDrift:
    return PredictionDrift(False, False, reason, (), tuple(skipped or ()))


def _check_segment(reference: pd.DataFrame, logged: pd.DataFrame, segment: str) -> None:
    missing = [
        name for name, t in (("reference scores", reference), ("log", logged)) if segment not in t
    ]
    if missing:
        raise ConveyorError(
            f"segment column {segment!r} is not in the {' or the '.join(missing)}; prediction "
            "drift compares segments both have"
        )


def _with_values(table: pd.DataFrame, column: str, segment: str | None) -> pd.DataFrame | None:
    """The one-column table (and segment) of the rows holding ``column``; None for none."""
    if column not in table.columns or table[column].isna().all():
        return None
    values = table.loc[table[column].notna(), [column] + ([segment] if segment else [])]
    if column in _NUMERIC:
        try:
            values[column] = pd.to_numeric(values[column]).astype(float)
        except (TypeError, ValueError):
            raise ConveyorError(f"column {column!r}: expected numbers") from None
    else:
        values[column] = values[column].astype(str)
    return values.reset_index(drop=True)


def _result(output: str, drift: ColumnDrift) -> OutputDrift:
    return OutputDrift(
        output=output,
        segment=drift.segment if drift.segment is not None else _ALL,
        test=drift.deciding_test,
        value=float(drift.score),
        drifted=bool(drift.drifted),
        reference_rows=drift.reference_rows,
        current_rows=drift.current_rows,
    )


def _reason(results: list[OutputDrift]) -> str:
    drifted = [r for r in results if r.drifted]
    if not drifted:
        compared = sorted({r.segment for r in results} - {_ALL})
        within = f" and within {len(compared)} segments" if compared else ""
        what = (
            "predicted values hold"
            if results[0].output == "value"
            else ("scores and predicted classes hold")
        )
        return f"No prediction drift: {what} over all rows{within}"
    listed = ", ".join(
        f"{r.output} {'over all rows' if r.segment == _ALL else f'in {r.segment}'} "
        f"({r.test} {r.value:.3g})"
        for r in drifted
    )
    return f"Prediction drift: {listed}"
