"""A persistent request cache and a call ledger for the strong model, in one SQLite file.

Every call to the black-box strong model goes through two objects defined here:

- [`RequestCache`] keeps each answer under a key that hashes *everything that changes the
  answer* (model name, endpoint kind, messages or prompt, sampling parameters, extra
  server parameters, `sample_index`) and *nothing else*: the base URL or port of the
  server are not in the key (a local server gets a new port every run, and a cache is
  meant to be shipped next to the results), and the API key never enters the key, the
  database or an export.
- [`Ledger`] records every call (stage, model, cached or not, tokens, latency, cost,
  error) in the same file, so that totals survive across the separate processes that
  notebooks and scripts run in, and enforces an optional budget cap *before* a request
  is sent.

Both open one SQLite connection per thread (and per process: a connection inherited over
`fork` is never reused) in WAL mode with a busy timeout, so concurrent writers from
threads and from processes lose nothing.

Cache modes:

- `"readwrite"`: answer from the cache when possible, store every new valid answer.
- `"replay"`: answer only from the cache; a miss raises [`CacheMiss`] (used to re-run a
  shipped set of results bit for bit without any model server).
- `"off"`: neither read nor write (the ledger still records the calls).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from cowest.stages import atomic_write_text

__all__ = [
    "BudgetExceeded",
    "CacheMiss",
    "CacheMode",
    "Ledger",
    "RequestCache",
    "estimate_tokens",
    "normalize_request",
    "request_key",
]

CacheMode = Literal["readwrite", "replay", "off"]
CACHE_MODES: tuple[str, ...] = ("readwrite", "replay", "off")

#: Bump when the meaning of a cached request changes (invalidates every stored key).
KEY_VERSION = 1

#: Request fields that never enter a key or the database: where the server lives and who
#: we are do not change the answer (and a secret must never be written down).
_EXCLUDED_FIELDS = frozenset({"base_url", "api_key", "api_key_env", "timeout", "timeout_s",
                              "stage", "organization", "headers"})
_FLOAT_FIELDS = ("temperature", "top_p")
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
    error             TEXT
);
CREATE INDEX IF NOT EXISTS calls_stage_model ON calls (stage, model);
"""


class CacheMiss(RuntimeError):
    """Replay mode is on and the cache holds no answer for a request."""


class BudgetExceeded(RuntimeError):
    """A call could push the money spent past the ledger's budget cap; nothing was sent."""


# ---------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------


def normalize_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of a request: the exact material that is hashed into its key.

    Drops the fields that do not change the answer (`base_url`, `api_key`, timeouts,
    `stage`), writes `temperature`/`top_p` as floats (so `0` and `0.0` are one key), a
    single stop string as a one-element list and an empty stop list as `None`, and drops
    `None`-valued fields (an absent field and an explicit `None` mean the same).
    """
    out: dict[str, Any] = {}
    for k, v in request.items():
        if k in _EXCLUDED_FIELDS or v is None:
            continue
        if k in _FLOAT_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = float(v)
        elif k == "stop":
            v = [v] if isinstance(v, str) else list(v)
            if not v:
                continue
        elif k == "extra_body" and not v:
            continue
        out[k] = v
    out.setdefault("sample_index", 0)
    return out


def request_key(request: Mapping[str, Any]) -> str:
    """The cache key of a request: sha256 of its canonical JSON (see [`normalize_request`])."""
    blob = json.dumps(
        {"v": KEY_VERSION, **normalize_request(request)},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _prompt_text(request: Mapping[str, Any]) -> str:
    """The prompt of a request as one string (for messages: contents joined)."""
    if request.get("prompt") is not None:
        p = request["prompt"]
        return p if isinstance(p, str) else json.dumps(p, ensure_ascii=False)
    msgs = request.get("messages") or []
    return "\n".join(str(m.get("content") or "") for m in msgs if isinstance(m, Mapping))


def estimate_tokens(text: str) -> int:
    """A rough, provider-independent token count: `ceil(len(text) / 4)`."""
    return math.ceil(len(text) / 4)


# ---------------------------------------------------------------------------------------
# the shared SQLite store
# ---------------------------------------------------------------------------------------


class _Store:
    """One SQLite file, one connection per (process, thread), WAL, created on first use."""

    def __init__(self, path: Path, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection().executescript(_SCHEMA)  # idempotent; waits on busy_timeout

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


# ---------------------------------------------------------------------------------------
# RequestCache
# ---------------------------------------------------------------------------------------


class RequestCache:
    """Persistent answers of the strong model, keyed by everything that changes them.

    Args:
        path: the SQLite file (created with its folder). The [`Ledger`] may share it.
        mode: `"readwrite"` (default), `"replay"` (only answer from the cache; a miss raises
            [`CacheMiss`]) or `"off"` (never read or write; the file is not even opened).

    A request is a plain dict such as
    `{"model": "gpt-4", "endpoint": "chat", "messages": [...], "temperature": 0.0,
    "top_p": 1.0, "max_tokens": 256, "stop": None, "logprobs": False, "top_logprobs": 0,
    "seed": None, "extra_body": {}, "sample_index": 0}`; see [`normalize_request`] for what
    is left out of the key. A response is any JSON-able dict.
    """

    def __init__(self, path: Path | str, mode: CacheMode = "readwrite") -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")
        self.path = Path(path)
        self.mode: CacheMode = mode
        self._store = _Store(self.path) if mode != "off" else None

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r}, mode={self.mode!r})"

    # -- lookups -------------------------------------------------------------------------

    def get(self, request: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored response of `request`, or `None` on a miss (replay mode: [`CacheMiss`])."""
        if self._store is None:
            return None
        key = request_key(request)
        row = self._store.connection().execute(
            "SELECT response FROM responses WHERE key = ?", (key,)
        ).fetchone()
        if row is not None:
            return json.loads(row[0])
        if self.mode == "replay":
            raise CacheMiss(self._miss_message(request, key))
        return None

    def put(self, request: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        """Store `response` under the key of `request` (no-op unless mode is readwrite)."""
        if self._store is None or self.mode != "readwrite":
            return
        norm = normalize_request(request)
        with self._store.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO responses (key, model, request, response, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (request_key(norm), str(norm.get("model", "")),
                 json.dumps(norm, ensure_ascii=False, sort_keys=True),
                 json.dumps(dict(response), ensure_ascii=False), time.time()),
            )

    def __contains__(self, request: Mapping[str, Any]) -> bool:
        if self._store is None:
            return False
        return self._store.connection().execute(
            "SELECT 1 FROM responses WHERE key = ?", (request_key(request),)
        ).fetchone() is not None

    def __len__(self) -> int:
        if self._store is None:
            return 0
        return self._store.connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def _miss_message(self, request: Mapping[str, Any], key: str) -> str:
        prompt = _prompt_text(request).replace("\n", " ")
        start = prompt[:80] + ("..." if len(prompt) > 80 else "")
        return (
            f"replay mode is on and the cache {self.path} holds no answer for model "
            f"{request.get('model')!r} ({request.get('endpoint', 'chat')} endpoint, "
            f"sample_index={request.get('sample_index', 0)}, key {key[:12]}), prompt "
            f"starting {start!r}. Replay mode answers only from the cache. To call the model "
            "instead, set the cache mode to 'readwrite' (RequestCache(path, mode='readwrite')), "
            "or import the cache that was shipped with the results (RequestCache.import_jsonl)."
        )

    # -- shipping ------------------------------------------------------------------------

    def export_jsonl(self, path: Path | str) -> int:
        """Write every stored answer as JSONL (gzip when `path` ends in `.gz`); returns rows."""
        path = Path(path)
        if self._store is None:
            raise RuntimeError("the cache is off (mode='off'): there is nothing to export")
        rows = self._store.connection().execute(
            "SELECT key, model, request, response, created FROM responses ORDER BY created, key"
        ).fetchall()
        lines = "".join(
            json.dumps({"key": k, "model": m, "request": json.loads(q),
                        "response": json.loads(r), "created": c}, ensure_ascii=False) + "\n"
            for k, m, q, r, c in rows
        )
        if path.suffix == ".gz":
            buf = io.BytesIO()
            # mtime=0: the same cache exports to the same bytes
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
                gz.write(lines.encode("utf-8"))
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, path)
        else:
            atomic_write_text(path, lines)
        return len(rows)

    def import_jsonl(self, path: Path | str) -> int:
        """Add the answers of an exported file (keys recomputed; existing keys kept).

        Works in every mode but `"off"` (importing is how a replay cache is filled).
        Returns the number of new answers.
        """
        path = Path(path)
        if self._store is None:
            raise RuntimeError("the cache is off (mode='off'): cannot import into it")
        opener = gzip.open if path.suffix == ".gz" else open
        added = 0
        with opener(path, "rt", encoding="utf-8") as f, self._store.transaction() as con:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                norm = normalize_request(row["request"])
                cur = con.execute(
                    "INSERT OR IGNORE INTO responses (key, model, request, response, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (request_key(norm), str(norm.get("model", "")),
                     json.dumps(norm, ensure_ascii=False, sort_keys=True),
                     json.dumps(row["response"], ensure_ascii=False),
                     float(row.get("created") or time.time())),
                )
                added += cur.rowcount
        return added

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


# ---------------------------------------------------------------------------------------
# Ledger
# ---------------------------------------------------------------------------------------

_SUMMARY_SQL = """
SELECT stage, model, COUNT(*), COALESCE(SUM(cached), 0), COALESCE(SUM(prompt_tokens), 0),
       COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(latency_s), 0.0),
       COALESCE(SUM(cost_usd), 0.0), COALESCE(SUM(error IS NOT NULL), 0)
FROM calls {where} GROUP BY stage, model ORDER BY MIN(id)
"""
_SUMMARY_FIELDS = ("stage", "model", "calls", "cache_hits", "prompt_tokens",
                   "completion_tokens", "latency_s", "cost_usd", "errors")


class Ledger:
    """Every strong-model call, persistently, with per-stage totals and a budget cap.

    Args:
        path: the SQLite file (usually the one the [`RequestCache`] uses).
        budget_usd: the cap on money spent over the whole ledger file (all stages, all
            processes); `None` for no cap. Before a call that is not answered from the
            cache, `spent + worst case of this call` must stay within the cap, or
            [`BudgetExceeded`] is raised and nothing is sent.
        prices: USD per 1M input and output tokens by model name, `{model: (in, out)}`;
            used when [`record`] is not given prices explicitly. Unknown models cost 0.

    What the totals mean: `calls` counts every call (cache hits included), `cache_hits`
    those answered from the cache, `prompt_tokens`/`completion_tokens` the tokens of every
    call (what the method consumed, cache hits included), `latency_s` and `cost_usd` what
    was actually spent (a cache hit costs nothing and takes ~0 s), `errors` the calls that
    failed or returned a malformed/empty answer.
    """

    def __init__(self, path: Path | str, *, budget_usd: float | None = None,
                 prices: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.path = Path(path)
        self.budget_usd = budget_usd
        self.prices = dict(prices or {})
        self._store = _Store(self.path)
        self._lock = threading.Lock()
        self._reserved = 0.0  # worst-case cost of calls in flight in this process

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, budget_usd={self.budget_usd!r})"

    # -- money ---------------------------------------------------------------------------

    def price(self, model: str, price_in: float | None = None,
              price_out: float | None = None) -> tuple[float, float]:
        p_in, p_out = self.prices.get(model, (0.0, 0.0))
        return (p_in if price_in is None else price_in, p_out if price_out is None else price_out)

    @staticmethod
    def cost(prompt_tokens: int, completion_tokens: int, price_in: float,
             price_out: float) -> float:
        """USD for a call, with prices in USD per 1M input / output tokens."""
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6

    def worst_case_cost(self, model: str, prompt_text: str, max_tokens: int, *,
                        price_in: float | None = None, price_out: float | None = None) -> float:
        """Upper estimate of one call: `len(prompt_text)/4` input and `max_tokens` output."""
        p_in, p_out = self.price(model, price_in, price_out)
        return self.cost(estimate_tokens(prompt_text), max_tokens, p_in, p_out)

    def spent(self) -> float:
        """USD spent so far over the whole ledger file (every process, every stage)."""
        return float(self._store.connection().execute(
            "SELECT COALESCE(SUM(cost_usd), 0.0) FROM calls").fetchone()[0])

    def check_budget(self, model: str, worst_cost: float) -> None:
        """Raise [`BudgetExceeded`] if `spent + worst_cost` would pass the cap."""
        if self.budget_usd is None:
            return
        with self._lock:
            self._check_locked(model, worst_cost)

    def _check_locked(self, model: str, worst_cost: float) -> None:
        spent = self.spent()
        if spent + self._reserved + worst_cost > self.budget_usd:  # type: ignore[operator]
            raise BudgetExceeded(
                f"budget cap reached: ${spent:.4f} spent so far in {self.path}"
                + (f" (+${self._reserved:.4f} in flight)" if self._reserved else "")
                + f", the next call to {model!r} may cost up to ${worst_cost:.4f}, and the cap"
                f" is ${self.budget_usd:.4f}. Nothing was sent. To go on, raise the cap "
                "(Ledger(budget_usd=...), the budget_usd setting of the config) or set it to "
                "None to remove it; answers already paid for stay in the cache."
            )

    @contextmanager
    def reserve(self, model: str, worst_cost: float) -> Iterator[None]:
        """Check the budget and hold `worst_cost` as in flight until the block ends.

        Concurrent calls of this process thus cannot together overshoot the cap.
        """
        if self.budget_usd is None:
            yield
            return
        with self._lock:
            self._check_locked(model, worst_cost)
            self._reserved += worst_cost
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= worst_cost

    # -- records -------------------------------------------------------------------------

    def record(self, stage: str, model: str, *, cached: bool, prompt_tokens: int = 0,
               completion_tokens: int = 0, latency_s: float = 0.0, error: str | None = None,
               price_in: float | None = None, price_out: float | None = None,
               cost_usd: float | None = None) -> float:
        """Add one call; returns its cost (0 for a cache hit)."""
        if cost_usd is None:
            p_in, p_out = self.price(model, price_in, price_out)
            cost_usd = 0.0 if cached else self.cost(prompt_tokens, completion_tokens, p_in, p_out)
        with self._store.transaction() as con:
            con.execute(
                "INSERT INTO calls (ts, stage, model, cached, prompt_tokens, completion_tokens,"
                " latency_s, cost_usd, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), stage, model, int(cached), int(prompt_tokens),
                 int(completion_tokens), float(latency_s), float(cost_usd), error),
            )
        return cost_usd

    def summary(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Totals per (stage, model), in the order stages first appeared."""
        where, args = ("WHERE stage = ?", (stage,)) if stage is not None else ("", ())
        rows = self._store.connection().execute(_SUMMARY_SQL.format(where=where), args).fetchall()
        return [dict(zip(_SUMMARY_FIELDS, r)) for r in rows]

    def totals(self) -> dict[str, Any]:
        """Totals over every call in the file (same fields as [`summary`], less stage/model)."""
        out = {f: 0 for f in _SUMMARY_FIELDS[2:]}
        out["latency_s"] = out["cost_usd"] = 0.0
        for row in self.summary():
            for f in out:
                out[f] += row[f]
        return out

    def calls(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Every recorded call (for audits), oldest first."""
        cols = ("id", "ts", "stage", "model", "cached", "prompt_tokens", "completion_tokens",
                "latency_s", "cost_usd", "error")
        where, args = ("WHERE stage = ?", (stage,)) if stage is not None else ("", ())
        rows = self._store.connection().execute(
            f"SELECT {', '.join(cols)} FROM calls {where} ORDER BY id", args).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def close(self) -> None:
        self._store.close()
