"""The steps of validation and drift over a partitioned log, as the monitoring pipeline
fans them out: ``plan_partitions`` once; ``profile_partition`` per partition (validation's
summary and drift's profile, one read); ``check_partitions`` once (validation's verdict,
which fails a broken feed, and drift's bins); ``count_partition`` per partition;
``judge_drift`` once. ``drift_summary`` says why drift reads twice and what is exact;
``data.validation_summary`` what validation keeps. Each step reads and writes files only,
so a pod runs one.

A partition's inputs are its columns but the payload log's ``conveyor.*`` ones, as
``ingest_inputs`` reads them. Evidently's HTML report is rendered on a seeded sample that
each partition contributes to in proportion to its rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conveyor.components.core.data.partitions import (
    BATCH_ROWS,
    Partition,
    list_partitions,
)
from conveyor.components.core.data.roles import Role
from conveyor.components.core.data.schema import load_schema
from conveyor.components.core.data.tables import read_parquet
from conveyor.components.core.data.validation import ValidationResult, render_report
from conveyor.components.core.data.validation_summary import (
    check_summary,
    load_summary,
    merge_summaries,
    summarize_partition,
    write_summary,
)
from conveyor.components.core.errors import ConveyorError, first_line
from conveyor.components.core.files import write_atomically, write_text_atomically
from conveyor.components.core.monitoring import drift_summary as summary
from conveyor.components.core.monitoring.drift import DriftReport, DriftSettings
from conveyor.components.core.monitoring.drift_report import DriftOutputs, write_outputs
from conveyor.components.core.serving.payload_log import input_columns, recent_days

__all__ = [
    "CHECKS",
    "COUNTS",
    "PROFILE",
    "SAMPLE",
    "check_partitions",
    "count_partition",
    "judge_drift",
    "plan_partitions",
    "profile_partition",
]


def plan_partitions(
    inputs_uri: str,
    days: int,
    reference: Path,
    tested_path: Path,
    segment: str | None = None,
    exclude: tuple[str, ...] = (),
    roles: dict[str, Role] | None = None,
) -> list[dict[str, Any]]:
    """The partitions of ``inputs_uri`` (its last ``days`` day folders when ``days``), as
    loop items; writes what is tested (decided on the reference) to ``tested_path``."""
    uris = recent_days(inputs_uri, days) if days else [inputs_uri]
    partitions = list_partitions(uris)
    tested = summary.tested_columns(read_parquet(reference), segment, exclude, roles)
    write_text_atomically(tested_path, json.dumps(tested.to_dict()))
    return [partition.to_dict() for partition in partitions]


PROFILE, CHECKS = "drift.json", "validation.json"  # the files of profile_partition's folder


def profile_partition(item: dict[str, Any], tested_path: Path, schema: Path, out: Path) -> int:
    """Pass 1 over one partition, into folder ``out``: drift's profile (``PROFILE``) and
    validation's summary (``CHECKS``) of its inputs, in one read; returns its rows."""
    partition, tested, rules = Partition.from_dict(item), _tested(tested_path), load_schema(schema)
    for file in partition.files:
        tested.check_file(file)
    profiled, checked, seen = None, [], 0
    for batch in partition.batches(None, BATCH_ROWS):
        inputs = batch[input_columns(batch)]
        profiled = summary.profile([inputs[tested.read]], tested, str(partition), profiled)
        checked.append(summarize_partition(inputs, rules, partition.offset + seen))
        seen += len(batch)
    _check_rows(partition, seen)
    out.mkdir(parents=True, exist_ok=True)
    summary.save_profile(profiled, out / PROFILE)
    write_summary(merge_summaries(checked), out / CHECKS)
    return seen


def check_partitions(
    profiles: Sequence[Path],
    reference: Path,
    schema: Path,
    tested_path: Path,
    outputs: tuple[Path, Path, Path],
) -> ValidationResult:
    """The partitions' validation summaries checked against ``schema``, as ``check_table``
    checks the whole inputs, its report written (``outputs[0]``), then, unless a rule of
    severity error is broken (a ConveyorError, as validate_inputs raises), their drift
    profiles merged (``outputs[2]``) and drift's bins fixed (``outputs[1]``)."""
    report, plan, merged = outputs
    # A loop's outputs are gathered in no promised order; the table's is the offsets'. The
    # partitions' summaries are let go once merged: their hashes are in the merged one.
    found = (load_summary(Path(path) / CHECKS) for path in profiles)
    checks = merge_summaries(sorted(found, key=lambda item: (item.offset, item.rows)))
    result = check_summary(checks, load_schema(schema))
    write_text_atomically(report, render_report(result, {"checked": checks.rows}))
    result.raise_errors()
    tested = _tested(tested_path)
    current = summary.merge_profiles([summary.load_profile(Path(p) / PROFILE) for p in profiles])
    table = read_parquet(reference)
    ref_profile = summary.profile([table], tested, "reference")
    entries = summary.plan_bins(table, ref_profile, current, tested)
    write_atomically(merged, lambda partial: summary.save_profile(current, partial))
    write_atomically(plan, lambda partial: summary.save_plan(entries, tested, partial))
    return result


COUNTS, SAMPLE = "counts.npz", "sample.parquet"  # the files of count_partition's folder


def count_partition(
    item: dict[str, Any], plan: Path, merged: Path, out: Path, sample_rows: int
) -> None:
    """Pass 2 over one partition, into folder ``out``: its counts in the plan's bins
    (``COUNTS``) and its share of the report's sample (``SAMPLE``, Parquet). One folder, so
    the gathering step takes one artifact per partition."""
    partition = Partition.from_dict(item)
    entries, tested = summary.load_plan(plan)
    total = summary.load_profile(merged)["rows"]
    wanted = _sample_positions(partition, total, sample_rows)
    counts, picked, seen = None, [], 0
    for batch in _batches(partition, tested):
        found = summary.count([batch], tested, entries, str(partition))
        counts = found if counts is None else summary.merge_counts([counts, found])
        inside = wanted[(wanted >= seen) & (wanted < seen + len(batch))] - seen
        picked.append(batch.iloc[inside])
        seen += len(batch)
    _check_rows(partition, seen)
    rows = pd.concat(picked, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    summary.save_counts(counts, out / COUNTS)
    rows.to_parquet(out / SAMPLE, index=False)


def judge_drift(
    counts: Sequence[Path],
    plan: Path,
    merged: Path,
    reference: Path,
    settings: DriftSettings,
    outputs: DriftOutputs,
) -> DriftReport:
    """The drift report of the whole log from its partitions' counts (count_partition's
    folders); writes ``outputs`` (Evidently's page on the partitions' samples)."""
    entries, tested = summary.load_plan(plan)
    table = read_parquet(reference)
    ref_side = summary.profile([table], tested, "reference")
    ref_counts = summary.count([table], tested, entries, "reference")
    current = summary.merge_counts([summary.load_counts(Path(path) / COUNTS) for path in counts])
    cur_side = summary.load_profile(merged)
    report = summary.judge(tested, entries, (ref_side, ref_counts), (cur_side, current), settings)
    sampled = pd.concat([read_parquet(Path(path) / SAMPLE) for path in counts], ignore_index=True)
    write_outputs(report, table, sampled, outputs)
    return report


def _check_rows(partition: Partition, seen: int) -> None:
    """Both passes must read the rows that were listed: a file that grew or shrank between
    them would mix two tables' counts."""
    if seen != partition.rows:
        raise ConveyorError(
            f"{partition}: {seen:,} rows, {partition.rows:,} when listed: the log changed "
            "while it was read"
        )


def _tested(path: Path) -> summary.Tested:
    try:
        return summary.Tested.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ConveyorError(
            f"tested columns {path}: cannot be read ({first_line(error)})"
        ) from None


def _batches(partition: Partition, tested: summary.Tested):
    for file in partition.files:
        tested.check_file(file)
    return partition.batches(tested.read, BATCH_ROWS)


def _sample_positions(partition: Partition, total: int, sample_rows: int) -> np.ndarray:
    """Seeded row positions in the partition: its share of ``sample_rows`` of ``total``."""
    if total <= sample_rows:
        return np.arange(partition.rows)
    share = round(sample_rows * partition.rows / total)
    rng = np.random.default_rng(partition.offset)
    return np.sort(rng.choice(partition.rows, min(share, partition.rows), replace=False))
