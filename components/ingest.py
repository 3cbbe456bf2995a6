"""Ingest: read a table, decide its task and split it into seeded train and test datasets."""

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
    task: str = "auto",
):
    """Reads a CSV or Parquet table, decides whether its target is a class or a number, and
    writes seeded train and test splits (stratified on the class for classification).

    Args:
        data_uri: The table: a local path, an fsspec URI (``gs://``, ``s3://`` with the
            matching extra installed), ``builtin://breast_cancer``, or, with
            ``dvc_repo``, a path inside that repository. CSV or Parquet, told apart by
            content.
        target_column: The label column: at least two classes, or (regression) finite
            numbers, not all equal.
        train: Output Parquet dataset with the training rows. Metadata: ``rows``,
            ``columns``, ``content_hash``, ``source``, ``revision``, ``seed``, ``task``
            (what train fits) and ``task_rule`` (why).
        test: Output Parquet dataset with the evaluation rows; same metadata.
        dvc_repo: A git repository (path or URL) whose DVC tracks ``data_uri``.
        data_revision: The git revision of ``dvc_repo`` to read; empty for HEAD.
        test_size: Share of rows held out for evaluation, between 0 and 1.
        seed: Seed of the split.
        task: ``classification``, ``regression``, or ``auto``: text and booleans are
            classes; numbers are regressed when one is not whole or there are more than 50
            distinct ones, else classes.
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
            task=task,
        )
    train.metadata.update(result.train)
    test.metadata.update(result.test)
