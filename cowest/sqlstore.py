"""The strong model's SQLite file: one job, a file that threads and processes share safely.

[`RequestCache`](cowest.cache.RequestCache) (table `responses`) and
[`Ledger`](cowest.ledger.Ledger) (table `calls`) usually live in one file. [`SqlStore`]
opens one SQLite connection per thread (and per process: a connection inherited over
`fork` is never reused) in WAL mode with a busy timeout, so concurrent writers from threads
and from processes lose nothing; it creates both tables and adds the columns an older
file lacks. A file that is not a readable SQLite database raises [`RequestCacheError`],
naming the file and the fix (methods wrapped in [`guarded`] turn such errors into it).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

__all__ = ["RequestCacheError", "SqlStore", "guarded"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key      TEXT PRIMARY KEY,
    model    TEXT NOT NULL,
    request  TEXT NOT NULL,
    response TEXT NOT NULL,
    created  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    ts                REAL NOT NULL,
    stage             TEXT NOT NULL,
    model             TEXT NOT NULL,
    cached            INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s         REAL NOT NULL,
    cost_usd          REAL NOT NULL,
    error             TEXT,
    attempt           INTEGER NOT NULL DEFAULT 1,
    final             INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS calls_stage_model ON calls (stage, model);
"""


class RequestCacheError(ValueError):
    """The cache/ledger file cannot be read as an SQLite database (corrupt, or another file)."""


#: Columns added to `calls` after the first version; (name, SQL definition). Older files get
#: them on open, with the value every older row had (one row per call, always the last).
_ADDED_CALL_COLUMNS = (("attempt", "INTEGER NOT NULL DEFAULT 1"),
                       ("final", "INTEGER NOT NULL DEFAULT 1"))
#: Words of SQLite errors that mean the file itself is unreadable (not a busy database).
_CORRUPT_WORDS = ("not a database", "malformed", "encrypted", "file is not", "corrupt")


def _corrupt(e: sqlite3.DatabaseError) -> bool:
    if not isinstance(e, sqlite3.OperationalError):
        return True
    return any(w in str(e).lower() for w in _CORRUPT_WORDS)


def _corrupt_message(path: Path, e: BaseException) -> str:
    return (
        f"the strong-model cache file {path} is not a readable SQLite database ({e}). It is "
        f"corrupt, or another kind of file. Delete it or move it aside (e.g. "
        f"mv {path} {path}.corrupt, and its -wal and -shm files if any): a new cache is "
        "created on the next run, and the answers it held will be requested again (paid "
        "again for an API model) unless you import a shipped export into the new one "
        "(RequestCache.import_jsonl)."
    )


_F = TypeVar("_F", bound=Callable[..., Any])


def guarded(method: _F) -> _F:
    """Turn an SQLite "file is unreadable" error of `method` into [`RequestCacheError`]."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            if _corrupt(e):
                raise RequestCacheError(_corrupt_message(self.path, e)) from None
            raise
    return wrapper  # type: ignore[return-value]


class SqlStore:
    """One SQLite file, one connection per (process, thread), WAL, created on first use."""

    def __init__(self, path: Path, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = self.connection()
            con.executescript(_SCHEMA)  # idempotent; waits on busy_timeout
            self._migrate(con)
        except sqlite3.DatabaseError as e:
            if _corrupt(e):
                self.close()
                raise RequestCacheError(_corrupt_message(self.path, e)) from None
            raise

    def _migrate(self, con: sqlite3.Connection) -> None:
        """Add the columns of `calls` that a file written by an older version lacks."""
        def missing() -> list[tuple[str, str]]:
            have = {row[1] for row in con.execute("PRAGMA table_info(calls)")}
            return [(n, d) for n, d in _ADDED_CALL_COLUMNS if n not in have]

        if not missing():
            return
        with self.transaction() as tx:  # another process may migrate at the same time
            for name, definition in missing():
                tx.execute(f"ALTER TABLE calls ADD COLUMN {name} {definition}")

    def connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != pid:
            con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            # WAL may be refused for a moment while another process holds the file; the
            # mode is persistent once set, so retrying is enough.
            for _ in range(50):
                try:
                    con.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.05)
            con.execute("PRAGMA synchronous = NORMAL")
            self._local.con, self._local.pid = con, pid
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` ... `COMMIT` (rolled back on error); waits for other writers."""
        con = self.connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        con = getattr(self._local, "con", None)
        if con is not None and getattr(self._local, "pid", None) == os.getpid():
            con.close()
        self._local.con = None
