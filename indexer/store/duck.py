"""DuckDB connections, opened alike by every part of imgdex."""

from __future__ import annotations


def connect(database: str = ":memory:", **kwargs):
    """A DuckDB connection without a progress bar. DuckDB's Python client turns it on where it
    takes the session for an interactive one (`python -c`, a notebook, a script embedding the CLI)
    and draws it on standard output once a query passes two seconds: among the rows of `sql`, and
    into the JSON of `index --json`."""
    import duckdb  # here: commands that never query do not pay for it at start-up

    con = duckdb.connect(database, **kwargs)
    con.execute("SET enable_progress_bar = false")
    return con
