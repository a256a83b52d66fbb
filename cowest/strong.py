"""The black-box strong model: an OpenAI-compatible API client, and a local llama.cpp server.

The strong model of CoWest is reached only through an API (GPT-4 in the paper). This module
provides:

- [`StrongClient`]: calls any OpenAI-compatible endpoint (OpenAI, a vLLM or llama.cpp
  server, ...) through the official `openai` SDK, in chat or text-completion mode, with
  its own retry loop (exponential backoff with jitter, honouring `Retry-After`), a
  persistent [`RequestCache`](cowest.cache.RequestCache), a [`Ledger`](cowest.cache.Ledger)
  of every call with a budget cap, bounded concurrency and token log-probabilities.
- [`Completion`]: one answer (text, token counts, log-probabilities, cached or not, error).
- [`LocalServer`]: starts `python -m llama_cpp.server` on an offline GGUF model as a
  context manager and guarantees that the process is gone afterwards.

Secrets: the API key is read only from the environment variable named by `api_key_env`.
It is handed to the SDK and nowhere else: it is not an attribute of the client, not in
its repr, not in the cache key or the cache file, not in the ledger and not in any error
message (every message this module builds is scrubbed of it).

Failures:

- transport errors (connection refused, timeouts), HTTP 429 and 5xx are retried up to
  `max_retries` times; HTTP 429/503 wait at least what `Retry-After` says. Other 4xx
  (bad request, wrong key, unknown model) are not retried. When the call gives up it
  raises [`StrongModelError`], after recording the failure in the ledger.
- a reply that arrives but is malformed or empty (no choices, `null` content, empty text,
  not JSON) is *not* fatal: the call returns a `Completion` with `error` set and empty
  text, records an error in the ledger and does *not* cache it, so a rerun asks again.
- with a budget cap, a call whose worst case could pass the cap raises
  [`BudgetExceeded`](cowest.cache.BudgetExceeded) before anything is sent.
"""

from __future__ import annotations

import atexit
import email.utils
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence
from urllib.parse import urlparse

from cowest.cache import BudgetExceeded, CacheMiss, Ledger, RequestCache

__all__ = [
    "BudgetExceeded",
    "CacheMiss",
    "Completion",
    "LLAMA_CPP_PLAIN_SAMPLING",
    "LocalServer",
    "LocalServerError",
    "StrongClient",
    "StrongModelError",
]

Prompt = str | list[dict[str, Any]]

#: Sent as `extra_body` to a server on the loopback interface (a local llama.cpp server)
#: unless the client is given its own: llama-cpp-python applies `repeat_penalty=1.1` by
#: default, so without this a temperature-0 answer would not be plain greedy decoding.
#: (With temperature > 0 the server's `top_k=40` and `min_p=0.05` still apply.)
LLAMA_CPP_PLAIN_SAMPLING: dict[str, Any] = {"repeat_penalty": 1.0}

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_PLACEHOLDER_KEY = "sk-local"
#: Server errors (HTTP 5xx) that no retry can fix.
_PERMANENT_ERRORS = ("logits_all=False",)


class StrongModelError(RuntimeError):
    """The strong model could not be reached or refused the request (after any retries)."""


class LocalServerError(RuntimeError):
    """The local llama.cpp server did not start or died; the message holds its log tail."""


# ---------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------


@dataclass
class Completion:
    """One answer of the strong model.

    Args:
        text: the generated text (`""` when `error` is set).
        prompt_tokens / completion_tokens: token counts reported by the server (estimated
            as `len(text)/4` when the server reports no usage).
        logprobs: `[(token, logprob), ...]` of the generated tokens when they were asked
            for and the server returned them, else `None`.
        top_logprobs: per generated token, `{token: logprob}` of the most likely
            alternatives (when `top_logprobs > 0` was asked), else `None`.
        cached: answered from the cache (no request was sent).
        error: why the reply is unusable (malformed or empty), else `None`.
        latency_s: seconds of the successful HTTP attempt (0 for a cache hit; as it was
            measured when first asked, in `original_latency_s`).
        finish_reason: as reported (`"stop"`, `"length"`, ...).
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[tuple[str, float | None]] | None = None
    cached: bool = False
    error: str | None = None
    latency_s: float = 0.0
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: str | None = None
    original_latency_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_cache(self) -> dict[str, Any]:
        d = asdict(self)
        d["original_latency_s"] = d.pop("latency_s")
        for k in ("cached", "error"):
            d.pop(k)
        return d

    @classmethod
    def from_cache(cls, d: Mapping[str, Any]) -> "Completion":
        lp = d.get("logprobs")
        return cls(
            text=d.get("text", ""),
            prompt_tokens=int(d.get("prompt_tokens") or 0),
            completion_tokens=int(d.get("completion_tokens") or 0),
            logprobs=[(t, p) for t, p in lp] if lp is not None else None,
            top_logprobs=d.get("top_logprobs"),
            finish_reason=d.get("finish_reason"),
            original_latency_s=d.get("original_latency_s"),
            cached=True,
            latency_s=0.0,
        )


def _derive_seed(sample_index: int) -> int:
    """A fixed 31-bit seed per sample index (sampling is reproducible where servers allow)."""
    digest = hashlib.sha256(f"cowest-sample-{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds asked by `Retry-After` (seconds or HTTP date) or `retry-after-ms`."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(ra)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# ---------------------------------------------------------------------------------------
# StrongClient
# ---------------------------------------------------------------------------------------


class StrongClient:
    """A cached, budgeted, retrying client of an OpenAI-compatible strong model.

    Args:
        name: a label for logs, progress bars and errors (e.g. `"strong"`).
        model: the model name sent to the API (and part of the cache key).
        base_url: the API root, e.g. `"https://api.openai.com/v1"` or
            `LocalServer.base_url`. Not part of the cache key.
        api_key_env: the environment variable that holds the API key; `None` for a local
            server (a placeholder key is sent). The variable is read on the first request
            that is not answered from the cache, so replay needs no key.
        mode: `"chat"` (`chat.completions`) or `"completion"` (legacy `completions`, for
            base models such as Gemma-270M, and for FLARE's token log-probabilities).
        max_tokens / temperature / top_p: default sampling; per-call overrides exist.
        timeout_s: per-attempt HTTP timeout.
        max_retries: retries after the first attempt (so `max_retries + 1` attempts).
        retry_base_s / retry_max_s: backoff `min(retry_max_s, retry_base_s * 2**k)`, times
            a jitter factor in [0.5, 1]; a `Retry-After` header is honoured (at least that
            long, at most `retry_after_max_s`).
        concurrency: threads used by [`complete_many`] (a llama.cpp server answers one
            request at a time; use 1 for it).
        price_in / price_out: USD per 1M input / output tokens (for the ledger and budget).
        cache: the [`RequestCache`]; `ledger`: the [`Ledger`].
        system_prompt: prepended as a system message in chat mode (as text followed by a
            blank line in completion mode).
        extra_body: extra JSON fields of every request (part of the cache key). `None`
            means [`LLAMA_CPP_PLAIN_SAMPLING`] for a loopback `base_url` and nothing
            otherwise; pass `{}` to send nothing.
    """

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str,
        cache: RequestCache,
        ledger: Ledger,
        api_key_env: str | None = None,
        mode: Literal["chat", "completion"] = "chat",
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        concurrency: int = 1,
        price_in: float = 0.0,
        price_out: float = 0.0,
        system_prompt: str | None = None,
        retry_base_s: float = 1.0,
        retry_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("chat", "completion"):
            raise ValueError(f"mode must be 'chat' or 'completion', got {mode!r}")
        self.name, self.model, self.base_url, self.mode = name, model, base_url, mode
        self.api_key_env = api_key_env
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.concurrency = max(1, int(concurrency))
        self.price_in, self.price_out = price_in, price_out
        self.cache, self.ledger = cache, ledger
        self.system_prompt = system_prompt
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.retry_after_max_s = retry_after_max_s
        if extra_body is None:
            host = (urlparse(base_url).hostname or "").lower()
            extra_body = LLAMA_CPP_PLAIN_SAMPLING if host in _LOOPBACK else {}
        self.extra_body: dict[str, Any] = dict(extra_body)
        self._sdk: Any = None
        self._sdk_lock = threading.Lock()
        self._hide_key: Any = lambda text: text

    def __repr__(self) -> str:
        return (f"StrongClient(name={self.name!r}, model={self.model!r}, base_url="
                f"{self.base_url!r}, mode={self.mode!r}, api_key_env={self.api_key_env!r})")

    # -- plumbing ------------------------------------------------------------------------

    def _client(self) -> Any:
        """The `openai.OpenAI` client, made on first use (reads the key then)."""
        with self._sdk_lock:
            if self._sdk is None:
                import openai

                if self.api_key_env:
                    key = os.environ.get(self.api_key_env, "")
                    if not key:
                        raise StrongModelError(
                            f"{self.name}: the environment variable {self.api_key_env} that "
                            f"should hold the API key for {self.base_url} is not set (or "
                            f"empty). Export it before running, e.g. export "
                            f"{self.api_key_env}=..., or use a cache in replay mode."
                        )
                else:
                    key = _PLACEHOLDER_KEY
                if key != _PLACEHOLDER_KEY:  # scrub the key actually used, even if env changes
                    self._hide_key = lambda text, _k=key: text.replace(_k, "***")
                self._sdk = openai.OpenAI(base_url=self.base_url, api_key=key,
                                          timeout=self.timeout_s, max_retries=0)
            return self._sdk

    def _scrub(self, text: str) -> str:
        """`text` with the API key (the one used, and the environment's) replaced by `***`."""
        text = self._hide_key(text)
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                text = text.replace(key, "***")
        return text

    def build_request(
        self,
        prompt: Prompt,
        *,
        sample_index: int = 0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """The request dict of one call: what is sent, and what the cache key hashes."""
        temp = self.temperature if temperature is None else temperature
        if temp > 0 and seed is None:
            seed = _derive_seed(sample_index)
        req: dict[str, Any] = {
            "model": self.model,
            "endpoint": self.mode,
            "temperature": float(temp),
            "top_p": float(self.top_p),
            "max_tokens": int(self.max_tokens if max_tokens is None else max_tokens),
            "stop": [stop] if isinstance(stop, str) else (list(stop) if stop else None),
            "logprobs": bool(logprobs),
            "top_logprobs": int(top_logprobs) if logprobs else 0,
            "seed": seed,
            "extra_body": dict(self.extra_body),
            "sample_index": int(sample_index),
        }
        if self.mode == "chat":
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
                if self.system_prompt:
                    messages.insert(0, {"role": "system", "content": self.system_prompt})
            else:
                messages = [dict(m) for m in prompt]
            req["messages"] = messages
        else:
            if not isinstance(prompt, str):
                raise TypeError(f"{self.name}: completion mode takes a string prompt, "
                                f"got {type(prompt).__name__}")
            req["prompt"] = (f"{self.system_prompt}\n\n{prompt}" if self.system_prompt
                             else prompt)
        return req

    def _prompt_text(self, req: Mapping[str, Any]) -> str:
        if "prompt" in req:
            return req["prompt"]
        return "\n".join(str(m.get("content") or "") for m in req["messages"])

    def _sdk_kwargs(self, req: Mapping[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "model": req["model"],
            "temperature": req["temperature"],
            "top_p": req["top_p"],
            "max_tokens": req["max_tokens"],
        }
        if req.get("stop"):
            kw["stop"] = req["stop"]
        if req.get("seed") is not None:
            kw["seed"] = req["seed"]
        if req.get("extra_body"):
            kw["extra_body"] = req["extra_body"]
        if req["endpoint"] == "chat":
            kw["messages"] = req["messages"]
            if req.get("logprobs"):
                kw["logprobs"] = True
                kw["top_logprobs"] = req.get("top_logprobs", 0)
        else:
            kw["prompt"] = req["prompt"]
            if req.get("logprobs"):
                # legacy API: an int, the number of alternatives per token (0: chosen only)
                kw["logprobs"] = req.get("top_logprobs", 0)
        return kw

    # -- one call ------------------------------------------------------------------------

    def _from_cache(self, req: Mapping[str, Any], stage: str) -> Completion | None:
        hit = self.cache.get(req)  # raises CacheMiss in replay mode
        if hit is None:
            return None
        comp = Completion.from_cache(hit)
        self.ledger.record(stage, self.model, cached=True, prompt_tokens=comp.prompt_tokens,
                           completion_tokens=comp.completion_tokens, latency_s=0.0)
        return comp

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_s))
        return delay

    def _call(self, req: dict[str, Any], stage: str) -> Completion:
        """Send one request (cache already missed): budget check, retries, parse, record."""
        import openai

        worst = self.ledger.worst_case_cost(self.model, self._prompt_text(req),
                                            req["max_tokens"], price_in=self.price_in,
                                            price_out=self.price_out)
        with self.ledger.reserve(self.model, worst):
            sdk = self._client()
            api = sdk.chat.completions if req["endpoint"] == "chat" else sdk.completions
            kwargs = self._sdk_kwargs(req)
            attempts, last_error, t_start = 0, "", time.monotonic()
            for attempt in range(1, self.max_retries + 2):
                attempts = attempt
                retry_after: float | None = None
                t0 = time.monotonic()
                try:
                    raw = api.with_raw_response.create(**kwargs)
                    body = raw.http_response.content
                    latency = time.monotonic() - t0
                    break
                except openai.APIStatusError as e:
                    status = e.status_code
                    last_error = f"HTTP {status}: {self._scrub(str(e.message))[:300]}"
                    permanent = any(p in str(e.message) for p in _PERMANENT_ERRORS)
                    if (status != 429 and status < 500) or permanent:
                        if permanent:
                            last_error += (" (a llama.cpp server gives log-probabilities only when"
                                           " started with logits_all=True)")
                        self._fail(stage, t_start, last_error)
                        raise StrongModelError(self._fail_message(
                            attempts, last_error, retryable=False)) from None
                    retry_after = _retry_after_s(e.response.headers if e.response else None)
                except openai.APITimeoutError:
                    last_error = f"no answer within the timeout of {self.timeout_s:g} s"
                except openai.APIConnectionError as e:
                    cause = e.__cause__ or e
                    last_error = self._scrub(f"connection failed ({type(cause).__name__}: "
                                             f"{cause})")[:300]
                if attempt <= self.max_retries:
                    time.sleep(self._backoff_s(attempt, retry_after))
            else:
                self._fail(stage, t_start, last_error)
                raise StrongModelError(self._fail_message(attempts, last_error, retryable=True))

        comp = self._parse(body, req, latency)
        self.ledger.record(
            stage, self.model, cached=False, prompt_tokens=comp.prompt_tokens,
            completion_tokens=comp.completion_tokens, latency_s=latency, error=comp.error,
            price_in=self.price_in, price_out=self.price_out)
        if comp.error is None:
            self.cache.put(req, comp.to_cache())
        return comp

    def _fail(self, stage: str, t_start: float, error: str) -> None:
        self.ledger.record(stage, self.model, cached=False,
                           latency_s=time.monotonic() - t_start, error=error)

    def _fail_message(self, attempts: int, last_error: str, *, retryable: bool) -> str:
        what = (f"gave up after {attempts} attempt(s) (max_retries={self.max_retries})"
                if retryable else "the request was refused (not retried)")
        checks = [f"is the server running and reachable at {self.base_url}?"]
        if self.api_key_env:
            checks.append(f"is the environment variable {self.api_key_env} set to a valid key?")
        checks.append(f"does the endpoint serve the model {self.model!r} in {self.mode} mode?")
        return self._scrub(
            f"strong model {self.name!r} (model {self.model!r} at {self.base_url}, "
            f"{self.mode} endpoint): {what}; last error: {last_error}. Check: "
            + " ".join(checks)
        )

    def _parse(self, body: bytes, req: Mapping[str, Any], latency: float) -> Completion:
        """Turn a reply body into a Completion; malformed or empty replies set `error`."""
        def bad(why: str, pt: int = 0, ct: int = 0) -> Completion:
            return Completion(text="", prompt_tokens=pt, completion_tokens=ct,
                              error=self._scrub(why), latency_s=latency)

        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return bad(f"malformed reply (not JSON): {body[:120]!r}")
        if not isinstance(data, dict):
            return bad(f"malformed reply (JSON {type(data).__name__}, not an object)")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        pt = usage.get("prompt_tokens")
        ct = usage.get("completion_tokens")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return bad("malformed reply: no choices", int(pt or 0), int(ct or 0))
        choice = choices[0]
        if req["endpoint"] == "chat":
            msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            text = msg.get("content")
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            return bad(f"malformed reply: content is {text!r}", int(pt or 0), int(ct or 0))
        if not text.strip():
            return bad("empty reply (no text)", int(pt or 0), int(ct or 0))
        if pt is None:
            pt = -(-len(self._prompt_text(req)) // 4)
        if ct is None:
            ct = -(-len(text) // 4)
        lp, top = _parse_logprobs(choice.get("logprobs")) if req.get("logprobs") else (None, None)
        return Completion(text=text, prompt_tokens=int(pt), completion_tokens=int(ct),
                          logprobs=lp, top_logprobs=top if req.get("top_logprobs") else None,
                          finish_reason=choice.get("finish_reason"), latency_s=latency,
                          original_latency_s=latency)

    # -- public --------------------------------------------------------------------------

    def complete(
        self,
        prompt: Prompt,
        *,
        stage: str,
        sample_index: int = 0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> Completion:
        """One answer: from the cache when possible, else from the API.

        Args:
            prompt: chat mode: a string (one user message, after the system prompt if
                any) or a list of messages; completion mode: a string.
            stage: the ledger label of this call (e.g. `"collab/refine"`).
            sample_index: which sample of the same request this is (part of the cache
                key; with `temperature > 0` and no `seed`, it also fixes the seed).
            temperature / max_tokens: override the client's defaults.
            stop: stop string(s).
            logprobs / top_logprobs: return the generated tokens' log-probabilities (and
                the `top_logprobs` most likely alternatives per token).
            seed: sampling seed sent to the server.

        Raises:
            CacheMiss: replay mode and no cached answer.
            BudgetExceeded: the call could pass the budget cap (nothing sent).
            StrongModelError: the API failed after retries, or refused the request.
        """
        req = self.build_request(prompt, sample_index=sample_index, temperature=temperature,
                                 max_tokens=max_tokens, stop=stop, logprobs=logprobs,
                                 top_logprobs=top_logprobs, seed=seed)
        return self._from_cache(req, stage) or self._call(req, stage)

    def complete_many(
        self,
        prompts: Sequence[Prompt],
        *,
        stage: str,
        desc: str | None = None,
        sample_indices: Sequence[int] | None = None,
        **kw: Any,
    ) -> list[Completion]:
        """Answers for many prompts, in order, with at most `concurrency` requests at once.

        Cache hits are answered first, without a thread. `sample_indices` (one per
        prompt) overrides `sample_index`; other keyword arguments are those of
        [`complete`]. An exception of one call (`StrongModelError`, `BudgetExceeded`)
        cancels the calls not yet started and is raised; answers already received are in
        the cache.
        """
        from tqdm import tqdm

        if sample_indices is not None and len(sample_indices) != len(prompts):
            raise ValueError("sample_indices must have one entry per prompt")
        base_index = kw.pop("sample_index", 0)
        reqs = [
            self.build_request(p, sample_index=(sample_indices[i] if sample_indices is not None
                                                else base_index), **kw)
            for i, p in enumerate(prompts)
        ]
        results: list[Completion | None] = [None] * len(reqs)
        with tqdm(total=len(reqs), desc=desc or f"{self.name} {stage}", unit="call",
                  dynamic_ncols=True, mininterval=1.0, disable=not reqs) as bar:
            todo = []
            for i, req in enumerate(reqs):
                hit = self._from_cache(req, stage)
                if hit is not None:
                    results[i] = hit
                    bar.update(1)
                else:
                    todo.append(i)
            if todo:
                errors = 0
                ex = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"strong-{self.name}")
                try:
                    futures = {ex.submit(self._call, reqs[i], stage): i for i in todo}
                    for fut in as_completed(futures):
                        comp = fut.result()
                        results[futures[fut]] = comp
                        errors += comp.error is not None
                        bar.update(1)
                        if errors:
                            bar.set_postfix(errors=errors, refresh=False)
                finally:
                    ex.shutdown(wait=True, cancel_futures=True)
        return [r for r in results if r is not None]


def _parse_logprobs(lp: Any) -> tuple[list[tuple[str, float | None]] | None,
                                      list[dict[str, float]] | None]:
    """Token log-probabilities from either reply shape.

    Chat: `logprobs.content = [{token, logprob, top_logprobs: [{token, logprob}]}]`.
    Completion (legacy): `logprobs = {tokens, token_logprobs, top_logprobs: [{tok: lp}]}`.
    """
    if not isinstance(lp, dict):
        return None, None
    if isinstance(lp.get("content"), list):
        toks, tops = [], []
        for item in lp["content"]:
            if not isinstance(item, dict):
                continue
            toks.append((str(item.get("token", "")), item.get("logprob")))
            tops.append({str(t.get("token", "")): t.get("logprob")
                         for t in item.get("top_logprobs") or [] if isinstance(t, dict)})
        return toks, tops
    if isinstance(lp.get("tokens"), list):
        vals = lp.get("token_logprobs") or [None] * len(lp["tokens"])
        toks = [(str(t), v) for t, v in zip(lp["tokens"], vals)]
        tops = [dict(d) if isinstance(d, dict) else {} for d in (lp.get("top_logprobs") or [])]
        return toks, tops or None
    return None, None


# ---------------------------------------------------------------------------------------
# LocalServer
# ---------------------------------------------------------------------------------------

_LIVE: "set[LocalServer]" = set()
_LIVE_LOCK = threading.Lock()
_SIGTERM_INSTALLED = False


def _stop_all_servers() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for s in servers:
        s.stop()


atexit.register(_stop_all_servers)


def _install_sigterm_handler() -> None:
    """On SIGTERM stop every live server, then behave as the previous handler would."""
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        _stop_all_servers()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # default action: die by the same signal
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    _SIGTERM_INSTALLED = True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux only)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LocalServer:
    """A llama-cpp-python OpenAI-compatible server on a GGUF file, as a context manager.

    ```python
    with LocalServer(gguf_path("qwen2.5-coder-1.5b"), alias="qwen-1.5b") as srv:
        client = StrongClient("strong", "qwen-1.5b", base_url=srv.base_url, ...)
    ```

    Args:
        gguf: the model file.
        alias: the model name the server answers to (use it as `StrongClient.model`).
        n_threads: llama.cpp threads for generation and prompt processing. llama.cpp
            spin-waits its threads: with as many threads as cores it slows to a crawl when
            any other process computes at the same time (e.g. the weak model); 1 thread
            is then much faster.
        n_ctx: context length (prompt + answer).
        n_batch: prompt-processing batch size.
        chat_format: llama.cpp chat format (`"chatml"`, `"gemma"`, ...); `None` uses the
            GGUF's own template.
        port: default: a free port.
        log_path: where the server's stdout/stderr go (default: a new temporary file, kept
            for inspection). uvicorn's access log there lists every request.
        startup_timeout_s: how long to wait for `GET /v1/models` to answer.
        logits_all: keep the logits of every position (the server's own default). Needed
            for any log-probabilities (`logprobs=True`: FLARE, and the strong-alone pass
            that serves FLARE); without it such requests fail with HTTP 500. Measured
            cost on Qwen2.5-Coder-1.5B: about 5% more server CPU time per call.
        extra_args: more `llama_cpp.server` arguments, e.g. `["--cache", "True"]` to keep
            prompt states in RAM across non-consecutive requests.

    The server keeps the KV cache of the previous request and reuses its longest common
    prefix, so consecutive requests that share a prefix (same instructions, few-shot
    examples) skip that part of prompt processing. Measured on Qwen2.5-Coder-1.5B (2
    cores): a 235-token prompt took 4.0 s to process cold and 1.5 s when its first ~170
    tokens matched the previous request (2 threads, idle machine; 6.0 s vs 2.1 s with 1
    thread). Only the previous request counts: keep prompts of one template together
    ([`StrongClient.complete_many`] does), or add `--cache True` via `extra_args`. The process runs in its own process
    group and is stopped on exit from the block (also on an exception or Ctrl-C), at
    interpreter exit and on SIGTERM; on Linux it also dies if the starting thread dies.
    """

    def __init__(
        self,
        gguf: Path | str,
        *,
        alias: str,
        n_threads: int = 2,
        n_ctx: int = 2048,
        n_batch: int = 512,
        chat_format: str | None = None,
        port: int | None = None,
        log_path: Path | str | None = None,
        startup_timeout_s: float = 120.0,
        logits_all: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.gguf = Path(gguf)
        self.alias = alias
        self.n_threads, self.n_ctx, self.n_batch = n_threads, n_ctx, n_batch
        self.chat_format = chat_format
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.logits_all = logits_all
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running else "stopped"
        return f"LocalServer({self.gguf.name!r}, alias={self.alias!r}, {self.base_url}, {state})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--model_alias", self.alias,
            "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
            "--n_ctx", str(self.n_ctx), "--n_batch", str(self.n_batch),
            "--verbose", "False",
        ]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        cmd += ["--logits_all", str(bool(self.logits_all))]
        return cmd + self.extra_args

    def log_tail(self, n_chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        data = self.log_path.read_bytes()[-n_chars:]
        return data.decode("utf-8", "replace")

    def start(self) -> "LocalServer":
        """Start the server and wait until it answers; raises [`LocalServerError`]."""
        if self.running:
            return self
        if not self.gguf.exists():
            raise LocalServerError(f"model file not found: {self.gguf}")
        if self.port is None:
            self.port = _free_port()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"llama-server-{self.alias}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _install_sigterm_handler()
        main = threading.current_thread() is threading.main_thread()
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent if main else None,
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        url = f"{self.base_url}/models"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise LocalServerError(
                    f"the llama.cpp server for {self.gguf.name} exited with code "
                    f"{self.proc.returncode} while starting. Command: {' '.join(self.command())}"
                    f"\nLog ({self.log_path}), last lines:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() - t0 > self.startup_timeout_s:
                raise LocalServerError(
                    f"the llama.cpp server for {self.gguf.name} did not answer GET {url} within "
                    f"{self.startup_timeout_s:g} s. Is llama-cpp-python[server] installed, and "
                    f"is the machine overloaded?\nLog ({self.log_path}), last lines:\n"
                    f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after `grace_s`)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # its own group: pgid == pid
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
