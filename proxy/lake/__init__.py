"""The lake: append-only Parquet segments in hive layout, read with DuckDB."""
