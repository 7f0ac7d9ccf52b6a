"""Query engines over the event store: DuckDB (the default, one machine) and Apache Spark (beyond one).

Both expose the same tables (`events`, `encounters` with its site resolved, `patients`, `notes`, `directory`)
and one method, `arrow(sql) -> pyarrow.Table`, so a task or a feature set compiles once per dialect and runs
on either; tests check that both give the same result on the same data.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from careloop.store import RESOLVED_VIEWS, EventStore
from careloop.tasks.cohort import Dialect, SparkDialect


class DuckDBEngine:
    dialect = Dialect()

    def __init__(self, store: Path | str, *, threads: int | None = None) -> None:
        self.store = EventStore.open(store)
        self.con = self.store.connect()
        if threads:
            self.con.execute(f"SET threads TO {int(threads)}")

    def arrow(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def close(self) -> None:
        self.con.close()


class ArrowEngine:
    """DuckDB over in-memory Arrow tables with the store's table names and views: the same feature SQL on one
    patient's rows (the dashboard's risk-over-the-stay timeline; the CDS service uses the per-stay evaluator,
    `careloop.features.rows`, whose fixed cost per call is far lower)."""

    dialect = Dialect()

    def __init__(self, tables: dict[str, pa.Table] | None = None, *, threads: int = 1) -> None:
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"SET threads TO {int(threads)}")
        self.load(tables or {})
        for sql in RESOLVED_VIEWS:
            self.con.execute(sql)

    def load(self, tables: dict[str, pa.Table]) -> None:
        """(Re)bind the tables, so that one connection can serve one patient after another."""
        from careloop import contracts as C

        for name, schema in C.TABLES.items():
            table = tables.get(name)
            self.con.register("encounters_raw" if name == "encounters" else name,
                              schema.empty_table() if table is None else table)

    def arrow(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def close(self) -> None:
        self.con.close()


_SPARK_TYPES = {"string": "string", "int64": "bigint", "int32": "int", "double": "double", "bool": "boolean",
                "date32[day]": "date", "timestamp[us, tz=UTC]": "timestamp"}


class SparkEngine:
    """Spark SQL over the same Parquet parts (local mode here; a cluster URL in production)."""

    dialect = SparkDialect()

    def __init__(self, store: Path | str, *, master: str = "local[2]", spark=None) -> None:
        import os

        from pyspark.sql import SparkSession

        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode talks on loopback only
        self.store = EventStore.open(store)
        self.spark = spark or (SparkSession.builder.master(master).appName("careloop")
                               .config("spark.sql.session.timeZone", "UTC")
                               .config("spark.ui.enabled", "false")
                               .config("spark.driver.host", "127.0.0.1")
                               .config("spark.driver.bindAddress", "127.0.0.1")
                               .config("spark.ui.showConsoleProgress", "false")
                               .config("spark.sql.shuffle.partitions", "4")
                               .config("spark.driver.memory", "2g")
                               .getOrCreate())
        for table in ("events", "encounters", "patients", "notes", "directory"):
            parts = self.store.parts(table)
            if not parts:  # an empty table still needs its columns: read an empty Parquet file of the contract
                import tempfile

                import pyarrow.parquet as pq

                from careloop import contracts as C

                empty = Path(tempfile.mkdtemp(prefix="careloop-empty-")) / f"{table}.parquet"
                pq.write_table(C.TABLES[table].empty_table(), empty)
                parts = [empty]
            df = self._read(table, parts)
            df.createOrReplaceTempView("encounters_raw" if table == "encounters" else table)
        for sql in RESOLVED_VIEWS:
            self.spark.sql(sql)

    def _read(self, table: str, parts: list[Path]):
        """A table's parts; a store written by an older careloop (not yet upgraded) with the columns added since
        as nulls, as `EventStore._source` reads it in DuckDB."""
        if self.store.current_format():
            return self.spark.read.parquet(*[str(p) for p in parts])
        from pyspark.sql import functions as F

        from careloop import contracts as C

        df = self.spark.read.option("mergeSchema", "true").parquet(*[str(p) for p in parts])
        for f in C.TABLES[table]:
            if f.name not in df.columns:
                df = df.withColumn(f.name, F.lit(None).cast(_SPARK_TYPES[str(f.type)]))
        return df.select(*C.TABLES[table].names)

    def arrow(self, sql: str) -> pa.Table:
        return self.spark.sql(sql).toArrow()

    def close(self) -> None:
        self.spark.stop()


def engine(name: str, store: Path | str):
    if name == "duckdb":
        return DuckDBEngine(store)
    if name == "spark":
        return SparkEngine(store)
    from careloop.errors import ConfigError

    raise ConfigError(f"--engine: unknown engine {name!r} (choose from: duckdb, spark)")
