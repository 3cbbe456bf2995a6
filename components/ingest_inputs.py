"""Ingest inputs: read recent inference inputs (a payload log) for monitoring."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import BASE_IMAGE

__all__ = ["ingest_inputs"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_inputs(
    inputs_uri: str,
    inputs: Output[Dataset],
    dvc_repo: str = "",
    data_revision: str = "",
):
    """Reads a table of the inputs a model was asked to predict on, as Parquet.

    Args:
        inputs_uri: The table: a local path or an fsspec URI (``gs://``, ``s3://``), CSV
            or Parquet, such as the day's payload log; with ``dvc_repo``, a path in it.
        inputs: Output Parquet dataset. Metadata: ``rows``, ``columns``,
            ``content_hash``, ``source``, ``revision``.
        dvc_repo: A git repository (path or URL) whose DVC tracks ``inputs_uri``.
        data_revision: The git revision of ``dvc_repo`` to read; empty for HEAD.
    """
    from pathlib import Path

    from components.core.data import Source, save_table
    from components.core.errors import step_errors

    with step_errors("ingest_inputs"):
        metadata = save_table(Source(inputs_uri, dvc_repo, data_revision), Path(inputs.path))
    inputs.metadata.update(metadata)
