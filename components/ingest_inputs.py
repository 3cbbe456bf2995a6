"""Ingest inputs: read recent inference inputs (a payload log) for monitoring."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["ingest_inputs"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_inputs(
    inputs_uri: str,
    inputs: Output[Dataset],
    log: Output[Dataset],
    inputs_days: int = 0,
    dvc_repo: str = "",
    data_revision: str = "",
    retention_days: int = 0,
):
    """Reads a table of the inputs a model was asked to predict on, as Parquet.

    Args:
        inputs_uri: The table: a local path or an fsspec URI (``gs://``, ``s3://``), CSV
            or Parquet, or a folder of them such as the serving runtime's payload log;
            with ``dvc_repo``, a path in it.
        inputs: Output Parquet dataset: the inputs only (features and id columns, none of
            the payload log's ``conveyor.*`` columns), to compare with the training data.
            Metadata: ``rows``, ``columns``, ``content_hash``, ``source``, ``revision``;
            with ``inputs_days``, ``days`` and ``files`` (how many were read).
        log: Output Parquet dataset: the inputs and the payload log's metadata
            (``conveyor.id``, ``conveyor.prediction``, ``conveyor.score``..., null in days
            written before it existed), for quality and prediction drift. Same metadata.
        inputs_days: With a payload log, read only its day folders of the last this many
            days, today (UTC) included, as a scheduled run wants; 0 reads all of it.
        dvc_repo: A git repository (path or URL) whose DVC tracks ``inputs_uri``.
        data_revision: The git revision of ``dvc_repo`` to read; empty for HEAD.
        retention_days: With a payload log, delete its day folders older than this
            many days (today, UTC, the first of them), since they hold production inputs,
            once the run's days are read; at least ``inputs_days``; 0 keeps every day.
    """
    from pathlib import Path

    from conveyor.components.core.errors import ConveyorError, step_errors
    from conveyor.components.core.serving.payload_log import prune_log, recent_days, save_log_tables

    with step_errors("ingest_inputs"):
        if retention_days and retention_days < inputs_days:
            raise ConveyorError(
                f"retention_days {retention_days} would delete days the run reads "
                f"(inputs_days {inputs_days}): keep at least as many"
            )
        uris = recent_days(inputs_uri, inputs_days) if inputs_days else [inputs_uri]
        read, logged = save_log_tables(
            uris, Path(inputs.path), Path(log.path), dvc_repo, data_revision
        )
        if retention_days:  # after reading: this run's days are read before any goes
            for day in prune_log(inputs_uri, retention_days):
                print(f"ingest_inputs: deleted {day}, older than {retention_days} day(s)")
    for metadata in (read, logged):
        if inputs_days:  # the files are many: name the log and its days instead
            metadata.update(source=inputs_uri, days=inputs_days, files=len(uris))
    inputs.metadata.update(read)
    log.metadata.update(logged)
