"""Ingest: read a table and split it into seeded, stratified train and test datasets."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["ingest"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest(
    data_uri: str,
    target_column: str,
    train: Output[Dataset],
    test: Output[Dataset],
    dvc_repo: str = "",
    data_revision: str = "",
    test_size: float = 0.2,
    seed: int = 42,
):
    """Reads a CSV or Parquet table and writes seeded, stratified train and test splits.

    Args:
        data_uri: The table: a local path, an fsspec URI (``gs://``, ``s3://`` with the
            matching extra installed), ``builtin://breast_cancer``, or, with
            ``dvc_repo``, a path inside that repository. CSV or Parquet, told apart by
            content.
        target_column: The label column; it must hold at least two classes.
        train: Output Parquet dataset with the training rows. Metadata: ``rows``,
            ``columns``, ``content_hash``, ``source``, ``revision``, ``seed``.
        test: Output Parquet dataset with the evaluation rows; same metadata.
        dvc_repo: A git repository (path or URL) whose DVC tracks ``data_uri``.
        data_revision: The git revision of ``dvc_repo`` to read; empty for HEAD.
        test_size: Share of rows held out for evaluation, between 0 and 1.
        seed: Seed of the split.
    """
    from pathlib import Path

    from conveyor.components.core.data.tables import Source, ingest_table
    from conveyor.components.core.errors import step_errors

    with step_errors("ingest"):
        result = ingest_table(
            source=Source(data_uri, dvc_repo, data_revision),
            target=target_column,
            test_size=test_size,
            seed=seed,
            train_path=Path(train.path),
            test_path=Path(test.path),
        )
    train.metadata.update(result.train)
    test.metadata.update(result.test)
