"""A persistent request cache and a call ledger for the strong model, in one SQLite file.

Every call to the black-box strong model goes through two objects defined here:

- [`RequestCache`] keeps each answer under a key that hashes *everything that changes the
  answer* (model name, endpoint kind, messages or prompt, sampling parameters, extra
  server parameters, `sample_index`, and the identity of the endpoint in the field
  `server`) and *nothing else*: the port of a local server is not in the key (it is new
  every run, and a cache is meant to be shipped next to the results), and the API key
  never enters the key, the database or an export. The endpoint identity is what answers
  the request: for an API, its normalised base URL; for a local llama.cpp server,
  `"local:<sha256 of the GGUF>"`, which the client leaves out of the request when the
  model name is an offline asset pinned to that very file (so such keys stay those of
  earlier versions). See [`cowest.client.StrongClient`].
- [`Ledger`] records every request sent (each attempt of a retried call has its own row)
  and every cache hit (stage, model, cached or not, tokens, latency, cost, error) in the
  same file, so that totals survive across the separate processes that notebooks and
  scripts run in, and enforces an optional budget cap *before* each request is sent.
  The worst case of a request is bounded by [`prompt_token_bound`] (a rule that cannot
  be exceeded) plus its `max_tokens`.

Both open one SQLite connection per thread (and per process: a connection inherited over
`fork` is never reused) in WAL mode with a busy timeout, so concurrent writers from
threads and from processes lose nothing.

A file that is not a readable SQLite database raises [`RequestCacheError`], naming the
file and the fix.

Cache modes:

- `"readwrite"`: answer from the cache when possible, store every new valid answer.
- `"replay"`: answer only from the cache; a miss raises [`CacheMiss`] (used to re-run a
  shipped set of results bit for bit without any model server).
- `"off"`: neither read nor write (the ledger still records the calls).
"""

from __future__ import annotations

import functools
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
from typing import Any, Callable, Iterator, Literal, Mapping, TypeVar

from cowest.artifacts import atomic_write_text

__all__ = [
    "BudgetExceeded",
    "CacheMiss",
    "CacheMode",
    "Ledger",
    "RequestCache",
    "RequestCacheError",
    "estimate_tokens",
    "normalize_request",
    "prompt_token_bound",
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
    error             TEXT,
    attempt           INTEGER NOT NULL DEFAULT 1,
    final             INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS calls_stage_model ON calls (stage, model);
"""


class CacheMiss(RuntimeError):
    """Replay mode is on and the cache holds no answer for a request."""


class BudgetExceeded(RuntimeError):
    """A call could push the money spent past the ledger's budget cap; nothing was sent."""


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


def _guarded(method: _F) -> _F:
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


# ---------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------


def normalize_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of a request: the exact material that is hashed into its key.

    Drops the fields that do not change the answer (`base_url`, `api_key`, timeouts,
    `stage`; the endpoint's identity, which does, is the field `server`), writes
    `temperature`/`top_p` as floats (so `0` and `0.0` are one key), a
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
    """A rough, provider-independent token count: `ceil(len(text) / 4)` (NOT a bound)."""
    return math.ceil(len(text) / 4)


#: Tokens allowed per message for the chat template's markers (role headers, separators:
#: ChatML's `<|im_start|>user\n`...`<|im_end|>\n` is 5, Llama-3's 5, Llama-2's `[INST]`
#: and `<<SYS>>` wrappers about 10).
MESSAGE_OVERHEAD_TOKENS = 16
#: Tokens allowed per request for what a server adds once (BOS, the reply's header, a
#: default system prompt of the template such as Qwen's or Llama-3.1's, about 25).
REQUEST_OVERHEAD_TOKENS = 64


def _utf8_len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if value is None:
        return 0
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def prompt_token_bound(request: Mapping[str, Any] | str) -> int:
    """An upper bound of the prompt tokens of a request, whatever the tokenizer.

    The rule: the UTF-8 byte length of the text sent (each message's content, role and
    name; or the completion prompt) plus [`MESSAGE_OVERHEAD_TOKENS`] per message (a
    completion prompt counts as one message) plus [`REQUEST_OVERHEAD_TOKENS`]. Why it
    holds: every token of a byte-level BPE (GPT-4's, Llama-3's, Qwen's) or of a
    SentencePiece model with byte fallback (Llama-2's, Gemma's) stands for at least one
    byte of the text (SentencePiece's leading-space marker replaces a one-byte space), so
    the text alone never has more tokens than bytes; the overheads cover the chat
    template and special tokens. A string is taken as one user message.
    """
    if isinstance(request, str):
        return _utf8_len(request) + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS
    if request.get("prompt") is not None:
        n_bytes, n_messages = _utf8_len(request["prompt"]), 1
    else:
        msgs = [m for m in request.get("messages") or [] if isinstance(m, Mapping)]
        n_bytes = sum(_utf8_len(m.get("content")) + _utf8_len(m.get("role"))
                      + _utf8_len(m.get("name")) for m in msgs)
        n_messages = max(1, len(msgs))
    return n_bytes + MESSAGE_OVERHEAD_TOKENS * n_messages + REQUEST_OVERHEAD_TOKENS


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
    "seed": None, "extra_body": {}, "sample_index": 0}`, plus `"server": <endpoint identity>`
    where the client sets one; see [`normalize_request`] for what is left out of the key.
    A response is any JSON-able dict; the client stores only valid answers.
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

    @_guarded
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

    @_guarded
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

    @_guarded
    def __contains__(self, request: Mapping[str, Any]) -> bool:
        if self._store is None:
            return False
        return self._store.connection().execute(
            "SELECT 1 FROM responses WHERE key = ?", (request_key(request),)
        ).fetchone() is not None

    @_guarded
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

    @_guarded
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

    @_guarded
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
SELECT stage, model, COALESCE(SUM(final), 0), COALESCE(SUM(cached), 0),
       COALESCE(SUM(1 - cached), 0), COALESCE(SUM(cached = 0 AND error IS NOT NULL), 0),
       COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
       COALESCE(SUM(latency_s), 0.0), COALESCE(SUM(cost_usd), 0.0),
       COALESCE(SUM(final AND error IS NOT NULL), 0)
FROM calls {where} GROUP BY stage, model ORDER BY MIN(id)
"""
_SUMMARY_FIELDS = ("stage", "model", "calls", "cache_hits", "requests", "failed_requests",
                   "prompt_tokens", "completion_tokens", "latency_s", "cost_usd", "errors")
_CALL_COLUMNS = ("id", "ts", "stage", "model", "cached", "prompt_tokens", "completion_tokens",
                 "latency_s", "cost_usd", "error", "attempt", "final")


class Ledger:
    """Every strong-model request and cache hit, persistently, with totals and a budget cap.

    Args:
        path: the SQLite file (usually the one the [`RequestCache`] uses).
        budget_usd: the cap on money spent over the whole ledger file (all stages, all
            processes); `None` for no cap. Before each request (each attempt of a retried
            call too), `spent + in flight in this process + worst case of this request`
            must stay within the cap, or [`BudgetExceeded`] is raised and nothing is sent.
        prices: USD per 1M input and output tokens by model name, `{model: (in, out)}`;
            used when [`record`] is not given prices explicitly. Unknown models cost 0
            (the client refuses to build for an API model without prices unless it is
            declared free, see `StrongSpec.free`).

    One row per request sent (`attempt` = 1, 2, ... within its call; `final` = 1 on the
    row that settled the call: the answer, the last failure, or a refusal) and one per
    cache hit (`attempt` 1, `final` 1). What the totals mean: `calls` counts the calls
    (cache hits included, each retried call once), `cache_hits` those answered from the
    cache, `requests` the HTTP requests sent (every attempt, retries included; `calls -
    cache_hits` of older files), `failed_requests` those that failed (retried or not),
    `prompt_tokens`/`completion_tokens` the tokens of every row (as reported by the server;
    estimates where it reported none; a failed request without a reply has 0),
    `latency_s` and `cost_usd` what was spent (a cache hit costs nothing and takes ~0 s; a
    request without reported usage costs its worst case), `errors` the calls left without
    an answer (failed after their retries, refused, or malformed/empty at the end).
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

    def worst_case_cost(self, model: str, prompt_text: str | Mapping[str, Any],
                        max_tokens: int, *, price_in: float | None = None,
                        price_out: float | None = None) -> float:
        """The most one request can cost: [`prompt_token_bound`] of `prompt_text` (a text,
        taken as one message, or a request dict) input tokens and `max_tokens` output."""
        p_in, p_out = self.price(model, price_in, price_out)
        return self.cost(prompt_token_bound(prompt_text), max_tokens, p_in, p_out)

    @_guarded
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

    @_guarded
    def record(self, stage: str, model: str, *, cached: bool, prompt_tokens: int = 0,
               completion_tokens: int = 0, latency_s: float = 0.0, error: str | None = None,
               price_in: float | None = None, price_out: float | None = None,
               cost_usd: float | None = None, attempt: int = 1, final: bool = True) -> float:
        """Add one request (or cache hit); returns its cost (0 for a cache hit).

        `cost_usd` overrides the cost computed from the tokens (used for a request whose
        usage the server did not report: its worst case). `attempt`/`final`: see the class.
        """
        if cost_usd is None:
            p_in, p_out = self.price(model, price_in, price_out)
            cost_usd = 0.0 if cached else self.cost(prompt_tokens, completion_tokens, p_in, p_out)
        with self._store.transaction() as con:
            con.execute(
                "INSERT INTO calls (ts, stage, model, cached, prompt_tokens, completion_tokens,"
                " latency_s, cost_usd, error, attempt, final)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), stage, model, int(cached), int(prompt_tokens),
                 int(completion_tokens), float(latency_s), float(cost_usd), error,
                 int(attempt), int(bool(final))),
            )
        return cost_usd

    @_guarded
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

    @_guarded
    def calls(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Every recorded row (for audits), oldest first."""
        cols = _CALL_COLUMNS
        where, args = ("WHERE stage = ?", (stage,)) if stage is not None else ("", ())
        rows = self._store.connection().execute(
            f"SELECT {', '.join(cols)} FROM calls {where} ORDER BY id", args).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def close(self) -> None:
        self._store.close()
