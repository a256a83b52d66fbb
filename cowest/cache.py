"""A persistent request cache of the strong model: one job, answers keyed by what changes them.

[`RequestCache`] keeps each answer under a key that hashes *everything that changes the
answer* (model name, endpoint kind, messages or prompt, sampling parameters, extra server
parameters, `sample_index`, and the identity of the endpoint in the field `server`) and
*nothing else*: the port of a local server is not in the key (it is new every run, and a
cache is meant to be shipped next to the results), and the API key never enters the key,
the database or an export. The endpoint identity is what answers the request: for an API,
its normalised base URL; for a local llama.cpp server, `"local:<sha256 of the GGUF>"`,
which the client leaves out of the request when the model name is an offline asset
pinned to that very file (so such keys stay those of earlier versions). See
[`cowest.client.StrongClient`].

The cache shares its SQLite file with the [`Ledger`](cowest.ledger.Ledger) of the calls
(see [`cowest.sqlstore`]: one connection per thread and process, WAL). A file that is not
a readable SQLite database raises [`RequestCacheError`], naming the file and the fix.

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
import os
import time
from pathlib import Path
from typing import Any, Literal, Mapping

from cowest.artifacts import atomic_write_text
from cowest.sqlstore import RequestCacheError, SqlStore, guarded

__all__ = [
    "CacheMiss",
    "CacheMode",
    "RequestCache",
    "RequestCacheError",
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


class CacheMiss(RuntimeError):
    """Replay mode is on and the cache holds no answer for a request."""


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


# ---------------------------------------------------------------------------------------
# RequestCache
# ---------------------------------------------------------------------------------------


class RequestCache:
    """Persistent answers of the strong model, keyed by everything that changes them.

    Args:
        path: the SQLite file (created with its folder). The
            [`Ledger`](cowest.ledger.Ledger) may share it.
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
        self._store = SqlStore(self.path) if mode != "off" else None

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r}, mode={self.mode!r})"

    # -- lookups -------------------------------------------------------------------------

    @guarded
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

    @guarded
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

    @guarded
    def __contains__(self, request: Mapping[str, Any]) -> bool:
        if self._store is None:
            return False
        return self._store.connection().execute(
            "SELECT 1 FROM responses WHERE key = ?", (request_key(request),)
        ).fetchone() is not None

    @guarded
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

    @guarded
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

    @guarded
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
