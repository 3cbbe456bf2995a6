"""Ingest's core: reading tables from files, URIs and DVC, target checks, the split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from conveyor.components.core.data.tables import (
    Source,
    check_target,
    content_hash,
    dataset_name,
    ingest_table,
    load_table,
    split_table,
)
from conveyor.components.core.errors import ConveyorError
from tests.conftest import require_binary


def test_csv_and_parquet_read_the_same_table(tmp_path: Path, species: pd.DataFrame) -> None:
    species.to_csv(tmp_path / "species.csv", index=False)
    species.to_parquet(tmp_path / "species.parquet", index=False)
    from_csv = load_table(Source(str(tmp_path / "species.csv")))
    from_parquet = load_table(Source(str(tmp_path / "species.parquet")))
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_exact=False)
    pd.testing.assert_frame_equal(from_parquet, species)


def test_parquet_is_recognised_by_content_not_name(tmp_path: Path, species: pd.DataFrame) -> None:
    species.to_parquet(tmp_path / "export.data", index=False)
    assert load_table(Source(str(tmp_path / "export.data"))).shape == species.shape


def test_reads_an_fsspec_uri(species: pd.DataFrame) -> None:
    with fsspec.open("memory://bucket/species.csv", "w") as file:
        species.to_csv(file, index=False)
    table = load_table(Source("memory://bucket/species.csv"))
    assert list(table.columns) == list(species.columns)
    assert len(table) == len(species)


def test_embedded_default_is_the_breast_cancer_table(breast_cancer: pd.DataFrame) -> None:
    assert breast_cancer.shape == (569, 31)
    assert set(breast_cancer["diagnosis"]) == {"malignant", "benign"}
    assert all(" " not in column for column in breast_cancer.columns)


def test_split_is_seeded_stratified_and_complete(species: pd.DataFrame) -> None:
    train, test = split_table(species, "species", 0.25, seed=3, where="t")
    again, _ = split_table(species, "species", 0.25, seed=3, where="t")
    other, _ = split_table(species, "species", 0.25, seed=4, where="t")
    pd.testing.assert_frame_equal(train, again)
    assert not train.equals(other)
    assert len(train) + len(test) == len(species)
    overall = species["species"].value_counts(normalize=True)
    in_test = test["species"].value_counts(normalize=True)
    assert np.allclose(overall.sort_index(), in_test.sort_index(), atol=0.02)


def test_content_hash_changes_with_any_cell(species: pd.DataFrame) -> None:
    changed = species.copy()
    changed.loc[5, "color"] = "purple"
    assert content_hash(species) != content_hash(changed)
    assert content_hash(species) == content_hash(species.copy())


def test_ingest_writes_parquet_splits_with_metadata(tmp_path: Path, species: pd.DataFrame) -> None:
    species.to_csv(tmp_path / "species.csv", index=False)
    result = ingest_table(
        Source(str(tmp_path / "species.csv")), "species", 0.2, 1, tmp_path / "tr", tmp_path / "te"
    )
    train, test = pd.read_parquet(tmp_path / "tr"), pd.read_parquet(tmp_path / "te")
    assert result.train["rows"] == len(train) and result.test["rows"] == len(test)
    assert result.train["content_hash"] == content_hash(train)
    assert result.train["source_content_hash"] == content_hash(
        load_table(Source(str(tmp_path / "species.csv")))
    )
    assert result.test["split"] == "test" and result.train["columns"] == 4
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("data/Customer Churn.csv", "customer-churn"),
        ("gs://bucket/tables/fraud_2026.parquet", "fraud-2026"),
        ("builtin://breast_cancer", "breast-cancer"),
        ("s3://b/x.csv.gz", "x"),
    ],
)
def test_dataset_name_is_a_clean_model_name(uri: str, expected: str) -> None:
    assert dataset_name(Source(uri)) == expected


# --- bad input: one clear line naming the file and the problem --------------------------


def _write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "file not found"),
        ("garbage.csv", bytes(range(256)) * 8, "not UTF-8 text (byte 0x80 at offset 128)"),
        ("header.csv", b"a,b,target\n", "the table has no rows"),
        ("empty.csv", b"", "the file is empty"),
        ("truncated.parquet", b"PAR1" + b"\x00" * 50, "not a readable Parquet file"),
        ("ragged.csv", b"a,b\n1,2\n3,4,5,6\n", "not a well-formed CSV file"),
    ],
)
def test_unreadable_tables_fail_with_one_line(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    uri = str(tmp_path / name) if content is None else _write(tmp_path, name, content)
    with pytest.raises(ConveyorError) as raised:
        load_table(Source(uri))
    assert str(raised.value).startswith(f"{uri}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_truncated_real_parquet_file_is_named(tmp_path: Path, species: pd.DataFrame) -> None:
    species.to_parquet(tmp_path / "whole.parquet")
    cut = (tmp_path / "whole.parquet").read_bytes()
    uri = _write(tmp_path, "cut.parquet", cut[: len(cut) // 2])
    with pytest.raises(ConveyorError, match=r"cut.parquet: not a readable Parquet file"):
        load_table(Source(uri))


def test_missing_cloud_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as on an install without the extra
    for protocol in ("gs", "gcs"):  # fsspec keeps the class of a protocol once imported
        monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, protocol, raising=False)
    with pytest.raises(ConveyorError, match=r"pip install 'conveyor\[gcs\]'"):
        load_table(Source("gs://no-such-bucket/table.csv"))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["a"] * 10, "has a single class ('a')"),
        ([2.5] * 10, "holds one value (2.5) in every row"),
        (["a", "b", None, "a", "b"] * 2, "is empty in 2 rows (first at row 3)"),
    ],
)
def test_unusable_targets_are_refused(labels: list, message: str) -> None:
    table = pd.DataFrame({"x": range(len(labels)), "y": labels})
    with pytest.raises(ConveyorError, match=r"^t.csv: target column 'y' ") as raised:
        check_target(table, "y", "t.csv")
    assert message in str(raised.value)


def test_missing_target_lists_the_columns() -> None:
    table = pd.DataFrame({"age": [1], "income": [2]})
    with pytest.raises(
        ConveyorError, match=r"target column 'label' not found; columns are: age, income"
    ):
        check_target(table, "label", "t.csv")


def test_class_with_one_row_cannot_be_stratified(species: pd.DataFrame) -> None:
    species.loc[0, "species"] = "rare"
    with pytest.raises(
        ConveyorError, match=r"class 'rare' of target column 'species' has only 1 row"
    ):
        split_table(species, "species", 0.2, 1, "t.csv")


# --- DVC: a real repository with a local remote, read at two revisions ------------------


def _run(*command: str, cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo whose DVC tracks data.csv: tag v1 (100 rows), tag v2 (150 rows); cache emptied."""
    require_binary("git")
    repo = tmp_path_factory.mktemp("dvc-repo")
    remote = tmp_path_factory.mktemp("dvc-remote")
    dvc = (sys.executable, "-m", "dvc")
    _run("git", "init", "-q", cwd=repo)
    _run("git", "config", "user.email", "ci@example.com", cwd=repo)
    _run("git", "config", "user.name", "CI", cwd=repo)
    _run(*dvc, "init", "-q", cwd=repo)
    _run(*dvc, "remote", "add", "-d", "local", str(remote), cwd=repo)
    for tag, rows in (("v1", 100), ("v2", 150)):
        from tests.conftest import multiclass_table

        multiclass_table(rows=rows, seed=rows).to_csv(repo / "data.csv", index=False)
        _run(*dvc, "add", "-q", "data.csv", cwd=repo)
        _run("git", "add", "-A", cwd=repo)
        _run("git", "commit", "-q", "-m", f"data {tag}", cwd=repo)
        _run("git", "tag", tag, cwd=repo)
        _run(*dvc, "push", "-q", cwd=repo)
    # Only the remote holds the data now: reading a revision must fetch it.
    subprocess.run(["rm", "-rf", str(repo / ".dvc" / "cache"), str(repo / "data.csv")], check=True)
    return repo


def test_dvc_file_is_read_at_each_revision(dvc_repo: Path, tmp_path: Path) -> None:
    v1 = load_table(Source("data.csv", str(dvc_repo), "v1"))
    v2 = load_table(Source("data.csv", str(dvc_repo), "v2"))
    assert (len(v1), len(v2)) == (100, 150)
    assert content_hash(v1) != content_hash(v2)
    result = ingest_table(
        Source("data.csv", str(dvc_repo), "v1"), "species", 0.2, 1, tmp_path / "a", tmp_path / "b"
    )
    tagged = subprocess.run(
        ["git", "rev-parse", "v1^{commit}"], cwd=dvc_repo, capture_output=True, text=True
    ).stdout.strip()
    assert result.train["revision"] == tagged
    assert result.train["source_content_hash"] == content_hash(v1)


@pytest.mark.parametrize(
    ("path", "revision", "message"),
    [
        ("data.csv", "v9", "unknown git revision 'v9'"),
        ("other.csv", "v1", "no such file tracked in the repository"),
    ],
)
def test_dvc_mistakes_are_named(dvc_repo: Path, path: str, revision: str, message: str) -> None:
    with pytest.raises(ConveyorError) as raised:
        load_table(Source(path, str(dvc_repo), revision))
    assert str(raised.value).startswith(f"{path} (DVC repo {dvc_repo} at {revision}): ")
    assert message in str(raised.value)


def test_compressed_and_tab_separated_files(tmp_path: Path, species: pd.DataFrame) -> None:
    species.to_csv(tmp_path / "species.csv.gz", index=False)
    species.to_csv(tmp_path / "species.tsv", index=False, sep="\t")
    for name in ("species.csv.gz", "species.tsv"):
        table = load_table(Source(str(tmp_path / name)))
        assert list(table.columns) == list(species.columns) and len(table) == len(species)


def test_pandas_extension_dtypes_arrive_as_numpy_ones(tmp_path: Path) -> None:
    """pd.NA from Parquet's nullable types would break scikit-learn's imputers."""
    table = pd.DataFrame(
        {
            "name": pd.array(["a", None, "b", "a"] * 5, dtype="string"),
            "count": pd.array([1, None, 3, 4] * 5, dtype="Int64"),
            "flag": pd.array([True, False, None, True] * 5, dtype="boolean"),
            "label": pd.Categorical(["x", "z"] * 10, categories=["x", "z", "unused"]),
        }
    )
    table.to_parquet(tmp_path / "typed.parquet")
    loaded = load_table(Source(str(tmp_path / "typed.parquet")))
    assert loaded.dtypes.astype(str).to_dict() == {
        "name": "object", "count": "float64", "flag": "float64", "label": "object",
    }  # fmt: skip
    assert loaded["name"].isna().sum() == 5 and loaded["count"].isna().sum() == 5
    check_target(loaded, "label", "typed.parquet")
    train, test = split_table(loaded, "label", 0.25, 0, "typed.parquet")
    assert set(train["label"]) == {"x", "z"}


def test_text_columns_become_dictionary_arrays_and_anything_else_keeps_its_type() -> None:
    import pyarrow as pa

    from conveyor.components.core.data.tables import as_arrow

    table = pd.DataFrame({
        "city": ["Lyon", None, "Oslo", "Lyon", np.nan],
        "mixed": ["7", 7, "x", None, 2.5],
        "empty": [None] * 5,
        "lists": [[1], [2], [1], None, []],
        "amount": [1.0, 2.0, np.nan, 4.0, 5.0],
    })  # fmt: skip
    arrow = as_arrow(table)
    city = arrow.column("city").chunk(0)
    assert pa.types.is_dictionary(city.type) and city.to_pylist() == [
        "Lyon",
        None,
        "Oslo",
        "Lyon",
        None,
    ]
    assert arrow.column("mixed").type == pa.string()
    assert arrow.column("mixed").to_pylist() == ["7", "7", "x", None, "2.5"]
    assert arrow.column("empty").type == pa.null()
    assert pa.types.is_list(arrow.column("lists").type)
    assert as_arrow(table, skip={"amount", "lists"}).column_names == ["city", "mixed", "empty"]
