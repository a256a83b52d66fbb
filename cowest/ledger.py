"""The call ledger of the strong model: one job, counting every call and capping the money.

[`Ledger`] records every request sent (each attempt of a retried call has its own row) and
every cache hit (stage, model, cached or not, tokens, latency, cost, error) in the SQLite
file the [`RequestCache`](cowest.cache.RequestCache) uses (see [`cowest.sqlstore`]), so
that totals survive across the separate processes that notebooks and scripts run in, and
enforces an optional budget cap *before* each request is sent ([`BudgetExceeded`]). The
worst case of a request is bounded by [`prompt_token_bound`] (a rule that cannot be
exceeded) plus its `max_tokens`; [`estimate_tokens`] is the rough count used where a server
reports no usage.
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from cowest.sqlstore import SqlStore, guarded

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "REQUEST_OVERHEAD_TOKENS",
    "BudgetExceeded",
    "Ledger",
    "estimate_tokens",
    "prompt_token_bound",
]


class BudgetExceeded(RuntimeError):
    """A call could push the money spent past the ledger's budget cap; nothing was sent."""


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
        path: the SQLite file (usually the one the
            [`RequestCache`](cowest.cache.RequestCache) uses).
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
        self._store = SqlStore(self.path)
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

    @guarded
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

    @guarded
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

    @guarded
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

    @guarded
    def calls(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Every recorded row (for audits), oldest first."""
        cols = _CALL_COLUMNS
        where, args = ("WHERE stage = ?", (stage,)) if stage is not None else ("", ())
        rows = self._store.connection().execute(
            f"SELECT {', '.join(cols)} FROM calls {where} ORDER BY id", args).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def close(self) -> None:
        self._store.close()
