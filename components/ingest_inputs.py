"""Ingest inputs: read recent inference inputs (a payload log) for monitoring."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import BASE_IMAGE

__all__ = ["ingest_inputs"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_inputs(
    inputs_uri: str,
    inputs: Output[Dataset],
    inputs_days: int = 0,
    dvc_repo: str = "",
    data_revision: str = "",
):
    """Reads a table of the inputs a model was asked to predict on, as Parquet.

    Args:
        inputs_uri: The table: a local path or an fsspec URI (``gs://``, ``s3://``), CSV
            or Parquet, or a folder of them such as the serving runtime's payload log;
            with ``dvc_repo``, a path in it.
        inputs: Output Parquet dataset. Metadata: ``rows``, ``columns``,
            ``content_hash``, ``source``, ``revision``; with ``inputs_days``, ``days``
            and ``files`` (how many were read).
        inputs_days: With a payload log, read only its day folders of the last this many
            days, today (UTC) included, as a scheduled run wants; 0 reads all of it.
        dvc_repo: A git repository (path or URL) whose DVC tracks ``inputs_uri``.
        data_revision: The git revision of ``dvc_repo`` to read; empty for HEAD.
    """
    from pathlib import Path

    from components.core.data import Source, save_table
    from components.core.errors import step_errors
    from components.core.payload_log import recent_days

    with step_errors("ingest_inputs"):
        uris = recent_days(inputs_uri, inputs_days) if inputs_days else [inputs_uri]
        sources = [Source(uri, dvc_repo, data_revision) for uri in uris]
        metadata = save_table(sources, Path(inputs.path))
    if inputs_days:  # the files are many: name the log and its days instead
        metadata.update(source=inputs_uri, days=inputs_days, files=len(uris))
    inputs.metadata.update(metadata)
