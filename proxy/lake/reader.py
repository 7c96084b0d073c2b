"""Open the lake for reading: an in-memory DuckDB with one view per dataset.

Readers never take a lock on the lake, so any number can query while proxies write.
Datasets with no segment yet still get an empty view with the right columns, so
queries work on a fresh lake.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from proxy.lake.schema import DATASETS, Dataset


def glob_for(data_dir: Path, ds_name: str) -> str:
    return str(Path(data_dir).resolve() / ds_name / "date=*" / "*.parquet")


def _arrow_to_duckdb(ds: Dataset) -> str:
    # An empty-select with typed NULLs, used when a dataset has no segment yet.
    mapping = {
        "string": "VARCHAR",
        "bool": "BOOLEAN",
        "double": "DOUBLE",
        "int32": "INTEGER",
        "int64": "BIGINT",
        "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
        "list<item: string>": "VARCHAR[]",
    }
    cols = ", ".join(
        f"CAST(NULL AS {mapping[str(f.type)]}) AS {f.name}" for f in ds.schema
    )
    return f"SELECT {cols}, CAST(NULL AS VARCHAR) AS date WHERE false"


def dataset_source_sql(data_dir: Path, ds: Dataset) -> str:
    """A SELECT over every complete segment of a dataset (or an empty typed relation)."""
    root = Path(data_dir) / ds.name
    if not any(root.glob("date=*/*.parquet")):
        return _arrow_to_duckdb(ds)
    return (
        f"SELECT * FROM read_parquet('{glob_for(data_dir, ds.name)}', "
        "hive_partitioning = true, union_by_name = true)"
    )


def connect(data_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views `requests`, `responses`, `labels`, `eval_sets`."""
    con = duckdb.connect(":memory:")
    for ds in DATASETS.values():
        con.execute(f"CREATE OR REPLACE VIEW {ds.name} AS {dataset_source_sql(Path(data_dir), ds)}")
    return con
