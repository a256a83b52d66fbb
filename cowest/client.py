"""The strong-model client: one job, calling an OpenAI-compatible endpoint well.

The strong model of CoWest is reached only through an API (GPT-4 in the paper). This module
provides:

- [`StrongClient`]: calls any OpenAI-compatible endpoint (OpenAI, a vLLM or llama.cpp
  server, ...) through the official `openai` SDK, in chat or text-completion mode, with
  its own retry loop (exponential backoff with jitter, honouring `Retry-After`), a
  persistent [`RequestCache`](cowest.cache.RequestCache), a [`Ledger`](cowest.cache.Ledger)
  of every call with a budget cap, bounded concurrency and token log-probabilities.
  Build it from a profile with [`StrongClient.from_spec`].
- [`Completion`]: one answer (text, token counts, log-probabilities, cached or not, error).

Starting a local llama.cpp server is the job of [`cowest.server`].

Secrets: the API key is read only from the environment variable named by `api_key_env`,
stripped of surrounding whitespace (a key read from a file often ends in a newline). It is
handed to the SDK and nowhere else: it is not an attribute of the client, not in its repr,
not in the cache key or the cache file, not in the ledger and not in any error message.
Every message this module produces (`Completion.error`, [`StrongModelError`], the ledger's
error column) is scrubbed of every representation of the key: as is, escaped (`repr`,
JSON, a bytes repr such as `b'Bearer sk-...\\n'`), URL-encoded, with or without a trailing
`\\n`/`\\r\\n`, and the bare key itself, so no fragment longer than `***` remains.

Failures (each request sent is one row of the ledger, see [`cowest.cache.Ledger`]):

- transport errors (connection refused or reset, timeouts), HTTP 429 and 5xx are retried
  up to `max_retries` times; HTTP 429/503 wait at least what `Retry-After` says. Other 4xx
  (bad request, wrong key, unknown model) are not retried. When the call gives up it
  raises [`StrongModelError`].
- a reply that arrives but is unusable (not JSON, truncated, no choices, `null` content,
  empty or blank text) is a failed attempt too: it is retried the same way, and if the
  last attempt is still unusable the call returns a [`Completion`] whose `ok` is False
  (`error` says why, `text` is `""`). Such a reply is never cached, so a rerun sends
  exactly the failed requests again and never the answered ones.
- with a budget cap, a request whose worst case (see
  [`prompt_token_bound`](cowest.cache.prompt_token_bound) plus `max_tokens`) could pass
  the cap raises [`BudgetExceeded`](cowest.cache.BudgetExceeded) before it is sent; each
  retry is checked again.

Money: every request sent is charged in the ledger: from the usage the server reports,
else at its worst case (a timed-out, reset or 5xx attempt, a reply without usage). A
request that was never sent (connection refused) or that the server refused with an HTTP
4xx (rate limit, bad key, bad request: providers do not bill these) costs 0. An API model
without prices is refused when the client is built, unless declared free
(`StrongSpec.free`, implied for a local server), so a budget cap always binds.

Duplicates: [`StrongClient.complete_many`] sends identical requests of one batch once and
gives each position its own copy of the answer.

Endpoint identity: the cache key includes the identity of what answers (field `server`
of the request): the normalised base URL of an API (no credentials, no default port, no
trailing slash), or `"local:<sha256 of the GGUF>"` for a local server (not its port). A
local model named after an offline asset answers from exactly that asset's pinned file,
so for it the identity adds nothing and is left out: such keys are those of earlier
versions. Keys of API models changed when the identity was added (one more request each).
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

from cowest.cache import (
    BudgetExceeded,
    CacheMiss,
    Ledger,
    RequestCache,
    estimate_tokens,
    prompt_token_bound,
    request_key,
)

if TYPE_CHECKING:
    from cowest.config import StrongSpec

__all__ = [
    "BudgetExceeded",
    "CacheMiss",
    "Completion",
    "StrongClient",
    "StrongModelError",
    "UnpricedModelError",
    "endpoint_identity",
    "scrub_secret",
]

Prompt = str | list[dict[str, Any]]

_PLACEHOLDER_KEY = "sk-local"
#: Server errors (HTTP 5xx) that no retry can fix.
_PERMANENT_ERRORS = ("logits_all=False",)
#: Retry backoff: `min(RETRY_MAX_S, RETRY_BASE_S * 2**k)` times a jitter in [0.5, 1]; a
#: `Retry-After` header is honoured up to `RETRY_AFTER_MAX_S`. Not profile settings.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0


class StrongModelError(RuntimeError):
    """The strong model could not be reached or refused the request (after any retries)."""


class UnpricedModelError(StrongModelError, ValueError):
    """An API model without prices, not declared free: no budget cap could limit it."""


# ---------------------------------------------------------------------------------------
# secrets and endpoint identity
# ---------------------------------------------------------------------------------------


def _secret_forms(secret: str) -> list[str]:
    """Every way `secret` may be written in a message, longest first (see the module doc)."""
    core = secret.strip()
    if not core:
        return []
    forms = {core}
    for s in {secret, core, core + "\n", core + "\r\n", core + "\r"}:
        forms.update({
            s, repr(s)[1:-1], json.dumps(s)[1:-1], repr(s.encode("utf-8"))[2:-1],
            s.encode("unicode_escape").decode("ascii"), quote(s), quote(s, safe=""),
            quote_plus(s),
        })
    return sorted((f for f in forms if f.strip()), key=len, reverse=True)


def scrub_secret(text: str, secret: str | None) -> str:
    """`text` with every representation of `secret` replaced by `***`."""
    if secret:
        for form in _secret_forms(secret):
            text = text.replace(form, "***")
    return text


def endpoint_identity(base_url: str) -> str:
    """The normalised base URL that identifies an API endpoint in the cache key.

    Lower-case scheme and host, no user name or password, no default port (80 for http,
    443 for https), no query or fragment, no trailing slash:
    `"HTTPS://user:pw@API.openai.com:443/v1/"` -> `"https://api.openai.com/v1"`.
    """
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def _pinned_identity(model: str) -> str | None:
    """`"local:<sha256>"` of the offline asset named `model`, if it is one."""
    from cowest.assets import ASSETS

    asset = ASSETS.get(model)
    return f"local:{asset.sha256}" if asset is not None else None


# ---------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------


@dataclass
class Completion:
    """One answer of the strong model.

    A completion is usable when [`ok`](Completion.ok): no `error` and some non-blank
    text. The client never returns an unusable one as if it were an answer, and never
    caches one.

    Args:
        text: the generated text (`""` when `error` is set).
        prompt_tokens / completion_tokens: token counts reported by the server (estimated
            as `len(text)/4` when the server reports no usage; the ledger then charges the
            request at its worst case).
        logprobs: `[(token, logprob), ...]` of the generated tokens when they were asked
            for and the server returned them, else `None`.
        top_logprobs: per generated token, `{token: logprob}` of the most likely
            alternatives (when `top_logprobs > 0` was asked), else `None`.
        cached: answered from the cache (no request was sent).
        error: why the reply is unusable (malformed, truncated, `null` or blank text,
            after every retry), else `None`.
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
        """A usable answer: no error, and text that is not empty or only whitespace."""
        return self.error is None and bool(self.text.strip())

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

    Build it from a profile entry with [`from_spec`]; the constructor has no defaults for
    anything a [`StrongSpec`](cowest.config.StrongSpec) sets (those defaults live in the
    spec only), so a direct call names every setting.

    Args:
        name: a label for logs, progress bars and errors (e.g. `"strong"`).
        model: the model name sent to the API (and part of the cache key).
        base_url: the API root, e.g. `"https://api.openai.com/v1"` or
            `LocalServer.base_url`. Not part of the cache key as such: see `endpoint_id`.
        api_key_env: the environment variable that holds the API key; `None` for a local
            server (a placeholder key is sent). The variable is read on the first request
            that is not answered from the cache, so replay needs no key.
        mode: `"chat"` (`chat.completions`) or `"completion"` (legacy `completions`, for
            base models such as Gemma-270M, and for FLARE's token log-probabilities).
        max_tokens / temperature / top_p: default sampling; per-call overrides exist for
            `max_tokens` and `temperature`.
        timeout_s: per-attempt HTTP timeout.
        max_retries: retries after the first attempt (so `max_retries + 1` attempts).
        concurrency: threads used by [`complete_many`] (a llama.cpp server answers one
            request at a time; use 1 for it).
        price_in / price_out: USD per 1M input / output tokens (for the ledger and budget).
        free: the endpoint costs nothing (a server you run yourself). With `free=False`
            and both prices 0 the constructor raises [`UnpricedModelError`]: an unpriced
            API model would never be capped by a budget.
        cache: the [`RequestCache`]; `ledger`: the [`Ledger`].
        system_prompt: prepended as a system message in chat mode (as text followed by a
            blank line in completion mode); `None` for none.
        extra_body: extra JSON fields of every request, sent as they are (part of the
            cache key); `{}` sends nothing. Server-specific fields (llama.cpp's plain
            sampling) are added by [`from_spec`], not here.
        endpoint_id: the identity of the endpoint in the cache key (see the module doc);
            default: [`endpoint_identity`] of `base_url`. A local server's is its
            [`LocalServer.identity`](cowest.server.LocalServer.identity).
        retry_base_s / retry_max_s: backoff `min(retry_max_s, retry_base_s * 2**k)`, times
            a jitter factor in [0.5, 1]; a `Retry-After` header is honoured (at least that
            long, at most `retry_after_max_s`). Not profile settings: module constants.
    """

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str,
        cache: RequestCache,
        ledger: Ledger,
        api_key_env: str | None,
        mode: Literal["chat", "completion"],
        max_tokens: int,
        temperature: float,
        top_p: float,
        timeout_s: float,
        max_retries: int,
        concurrency: int,
        price_in: float,
        price_out: float,
        free: bool,
        system_prompt: str | None,
        extra_body: Mapping[str, Any],
        endpoint_id: str | None = None,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        retry_after_max_s: float = RETRY_AFTER_MAX_S,
    ) -> None:
        if mode not in ("chat", "completion"):
            raise ValueError(f"mode must be 'chat' or 'completion', got {mode!r}")
        self.name, self.model, self.base_url, self.mode = name, model, base_url, mode
        self.api_key_env = api_key_env
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.concurrency = max(1, int(concurrency))
        self._url = endpoint_identity(base_url)  # for messages: no credentials
        self.price_in, self.price_out, self.free = price_in, price_out, bool(free)
        if not self.free and not price_in and not price_out:
            raise UnpricedModelError(
                f"strong_models.{name}: model {model!r} at {self._url} has "
                "no prices (price_in_per_mtok and price_out_per_mtok are both 0), so no "
                "budget cap could limit what it spends. Set price_in_per_mtok and "
                "price_out_per_mtok (USD per 1M tokens) in that profile entry, or free: true "
                "if it is a server you run yourself.")
        self.endpoint_id = endpoint_id or self._url
        # in the key unless the model name already pins it (keys of earlier versions)
        self._key_server = (None if self.endpoint_id == _pinned_identity(model)
                            else self.endpoint_id)
        self.cache, self.ledger = cache, ledger
        self.system_prompt = system_prompt
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.retry_after_max_s = retry_after_max_s
        self.extra_body: dict[str, Any] = dict(extra_body)
        self._sdk: Any = None
        self._sdk_lock = threading.Lock()
        self._hide_key: Callable[[str], str] = lambda text: text

    def __repr__(self) -> str:
        return (f"StrongClient(name={self.name!r}, model={self.model!r}, base_url="
                f"{self._url!r}, mode={self.mode!r}, api_key_env={self.api_key_env!r})")

    @classmethod
    def from_spec(cls, spec: StrongSpec, *, base_url: str, cache: RequestCache,
                  ledger: Ledger, server: Any = None) -> "StrongClient":
        """The client a profile's strong-model entry describes.

        Every client setting of `spec` is used: name, model, mode, max_tokens,
        temperature, top_p, system_prompt, extra_body, timeout_s, max_retries,
        concurrency, price_in_per_mtok, price_out_per_mtok, and api_key_env and free
        (backend `"api"` only: a local server needs no key and is free). An API entry
        with both prices 0 and `free: false` raises [`UnpricedModelError`].

        The endpoint identity in the cache key: for `"api"`, the normalised `base_url`;
        for `"local"`, `server.identity` when the started
        [`LocalServer`](cowest.server.LocalServer) is given, else that of the offline
        asset `spec.model` (the file `LocalServer.from_spec` serves; `"local:<model>"`
        for a name that is no asset, such as a test's fake server).

        `base_url` is where the model answers: `spec.base_url` for backend `"api"`,
        [`LocalServer.base_url`](cowest.server.LocalServer.base_url) for `"local"`.
        For backend `"local"` the request body is the server's
        [`request_defaults`](cowest.server.LocalServer.request_defaults) (llama.cpp plain
        sampling) updated with `spec.extra_body`, so a profile can override any of them;
        for `"api"` it is `spec.extra_body` alone.
        """
        endpoint_id: str | None = None
        if spec.backend == "local":
            from cowest.server import LocalServer

            extra_body = {**LocalServer.request_defaults, **spec.extra_body}
            api_key_env, free = None, True
            endpoint_id = (server.identity if server is not None
                           else _pinned_identity(spec.model) or f"local:{spec.model}")
        else:
            extra_body, api_key_env, free = dict(spec.extra_body), spec.api_key_env, spec.free
        return cls(
            spec.name, spec.model, base_url=base_url, cache=cache, ledger=ledger,
            api_key_env=api_key_env, mode=spec.mode, max_tokens=spec.max_tokens,
            temperature=spec.temperature, top_p=spec.top_p, timeout_s=spec.timeout_s,
            max_retries=spec.max_retries, concurrency=spec.concurrency,
            price_in=spec.price_in_per_mtok, price_out=spec.price_out_per_mtok, free=free,
            system_prompt=spec.system_prompt, extra_body=extra_body, endpoint_id=endpoint_id,
        )

    # -- plumbing ------------------------------------------------------------------------

    def _client(self) -> Any:
        """The `openai.OpenAI` client, made on first use (reads the key then)."""
        with self._sdk_lock:
            if self._sdk is None:
                import openai

                if self.api_key_env:
                    raw = os.environ.get(self.api_key_env, "")
                    key = raw.strip()  # a key read from a file often ends in a newline
                    if not key:
                        raise StrongModelError(
                            f"{self.name}: the environment variable {self.api_key_env} that "
                            f"should hold the API key for {self._url} is not set (or "
                            f"empty). Export it before running, e.g. export "
                            f"{self.api_key_env}=..., or use a cache in replay mode."
                        )
                    # scrub the key actually used, even if the environment changes later
                    # (a closure: the key is in no attribute, repr or vars() of the client)
                    forms = _secret_forms(raw) + _secret_forms(key)

                    def hide(text: str, _forms: list[str] = forms) -> str:
                        for form in _forms:
                            text = text.replace(form, "***")
                        return text

                    self._hide_key = hide
                else:
                    key = _PLACEHOLDER_KEY
                self._sdk = openai.OpenAI(base_url=self.base_url, api_key=key,
                                          timeout=self.timeout_s, max_retries=0)
            return self._sdk

    def _scrub(self, text: str) -> str:
        """`text` with the API key (the one used, and the environment's) replaced by `***`."""
        text = self._hide_key(text)
        if self.api_key_env:
            text = scrub_secret(text, os.environ.get(self.api_key_env))
        return text

    def _excerpt(self, text: str, n: int) -> str:
        """The first `n` characters of `text`, scrubbed first (so no key is cut in half)."""
        return self._scrub(text)[:n]

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
        if self._key_server is not None:
            req["server"] = self._key_server
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
        if not comp.ok:  # not written by this version (it caches valid answers only)
            if self.cache.mode == "replay":
                raise CacheMiss(f"replay mode is on and the cache {self.cache.path} holds only "
                                f"an unusable (blank) answer for model {self.model!r} "
                                f"(key {request_key(req)[:12]}); set the cache mode to "
                                "'readwrite' to ask again.")
            return None
        self.ledger.record(stage, self.model, cached=True, prompt_tokens=comp.prompt_tokens,
                           completion_tokens=comp.completion_tokens, latency_s=0.0)
        return comp

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_s))
        return delay

    def worst_case_cost(self, req: Mapping[str, Any]) -> float:
        """The most one request can cost: [`prompt_token_bound`] + `max_tokens` at the prices."""
        return Ledger.cost(prompt_token_bound(req), int(req["max_tokens"]), self.price_in,
                           self.price_out)

    def _call(self, req: dict[str, Any], stage: str) -> Completion:
        """Send one request (cache already missed): attempts, budget, ledger, cache.

        Each attempt is checked against the budget before it is sent and recorded in the
        ledger before the budget hold is released; only a valid answer is cached.
        """
        worst = self.worst_case_cost(req)
        n_attempts = self.max_retries + 1
        kwargs = self._sdk_kwargs(req)
        api: Any = None
        for attempt in range(1, n_attempts + 1):
            with self.ledger.reserve(self.model, worst):
                if api is None:  # after the first budget check: a refused call needs no key
                    sdk = self._client()
                    api = sdk.chat.completions if req["endpoint"] == "chat" else sdk.completions
                out = self._attempt(api, kwargs, req)
                final = out.error is None or not out.retry or attempt == n_attempts
                comp = out.comp
                self.ledger.record(
                    stage, self.model, cached=False,
                    prompt_tokens=comp.prompt_tokens if comp is not None else 0,
                    completion_tokens=comp.completion_tokens if comp is not None else 0,
                    latency_s=out.latency_s, error=out.error, price_in=self.price_in,
                    price_out=self.price_out,
                    cost_usd={"usage": None, "worst": worst, "none": 0.0}[out.charge],
                    attempt=attempt, final=final)
            if out.error is None and comp is not None:
                self.cache.put(req, comp.to_cache())
                return comp
            if final:
                break
            time.sleep(self._backoff_s(attempt, out.retry_after))
        error = out.error or "unknown error"
        if comp is not None and out.retry:  # replies came, none usable: not an exception
            comp.error = (f"{error} (after {attempt} attempt(s), max_retries="
                          f"{self.max_retries}; not cached: a rerun asks again)")
            comp.text = ""
            return comp
        raise StrongModelError(self._fail_message(attempt, error, retryable=out.retry))

    def _attempt(self, api: Any, kwargs: Mapping[str, Any], req: Mapping[str, Any]) -> "_Attempt":
        """Send one HTTP request; classify what happened (never raises an SDK error)."""
        import openai

        t0 = time.monotonic()

        def failed(error: str, *, retry: bool, charge: str,
                   retry_after: float | None = None) -> _Attempt:
            return _Attempt(None, self._scrub(error), retry, charge,  # type: ignore[arg-type]
                            time.monotonic() - t0, retry_after)

        try:
            raw = api.with_raw_response.create(**kwargs)
            body = raw.http_response.content
        except openai.APIStatusError as e:
            status = e.status_code
            error = f"HTTP {status}: {self._excerpt(str(e.message), 300)}"
            permanent = any(p in str(e.message) for p in _PERMANENT_ERRORS)
            if permanent:
                error += (" (a llama.cpp server gives log-probabilities only when started "
                          "with logits_all=True)")
            retry = (status == 429 or status >= 500) and not permanent
            headers = e.response.headers if e.response is not None else None
            # a 4xx is a refusal before any generation: not billed by providers
            return failed(error, retry=retry, charge="none" if status < 500 else "worst",
                          retry_after=_retry_after_s(headers) if retry else None)
        except openai.APITimeoutError as e:
            sent = not _never_sent(e.__cause__)
            return failed(f"no answer within the timeout of {self.timeout_s:g} s"
                          + ("" if sent else " (could not connect)"),
                          retry=True, charge="worst" if sent else "none")
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            sent = not _never_sent(cause)
            return failed(f"connection failed ({type(cause).__name__}: "
                          f"{self._excerpt(str(cause), 300)})", retry=not _unsendable(cause),
                          charge="worst" if sent else "none")
        except openai.OpenAIError as e:  # anything else the SDK raises: not retried
            return failed(f"{type(e).__name__}: {self._excerpt(str(e), 300)}", retry=False,
                          charge="worst")
        latency = time.monotonic() - t0
        comp, usage = self._parse(body, req, latency)
        return _Attempt(comp, comp.error, comp.error is not None,
                        "usage" if usage else "worst", latency)

    def _fail_message(self, attempts: int, last_error: str, *, retryable: bool) -> str:
        what = (f"gave up after {attempts} attempt(s) (max_retries={self.max_retries})"
                if retryable else "the request was refused (not retried)")
        checks = [f"is the server running and reachable at {self._url}?"]
        if self.api_key_env:
            checks.append(f"is the environment variable {self.api_key_env} set to a valid key?")
        checks.append(f"does the endpoint serve the model {self.model!r} in {self.mode} mode?")
        return self._scrub(
            f"strong model {self.name!r} (model {self.model!r} at {self._url}, "
            f"{self.mode} endpoint): {what}; last error: {last_error}. Check: "
            + " ".join(checks)
        )

    def _parse(self, body: bytes, req: Mapping[str, Any],
               latency: float) -> tuple[Completion, bool]:
        """A reply body as a Completion (unusable replies set `error`), and whether the
        server reported its usage."""
        def bad(why: str, pt: Any = None, ct: Any = None) -> tuple[Completion, bool]:
            usage = pt is not None and ct is not None
            return Completion(text="", prompt_tokens=_int(pt), completion_tokens=_int(ct),
                              error=self._scrub(why), latency_s=latency), usage

        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            text = body.decode("utf-8", "replace")
            return bad(f"malformed reply (not JSON; truncated?): {self._excerpt(text, 120)!r}")
        if not isinstance(data, dict):
            return bad(f"malformed reply (JSON {type(data).__name__}, not an object)")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        pt = usage.get("prompt_tokens")
        ct = usage.get("completion_tokens")
        pt = pt if isinstance(pt, int) and not isinstance(pt, bool) and pt >= 0 else None
        ct = ct if isinstance(ct, int) and not isinstance(ct, bool) and ct >= 0 else None
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            why = "no choices"
            if isinstance(data.get("error"), (dict, str)):
                why += f"; error: {self._excerpt(json.dumps(data['error']), 200)}"
            return bad(f"malformed reply: {why}", pt, ct)
        choice = choices[0]
        if req["endpoint"] == "chat":
            msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            text = msg.get("content")
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            return bad(f"malformed reply: content is {text!r}", pt, ct)
        if not text.strip():
            return bad(f"empty reply (blank text {text!r})", pt, ct)
        usage_reported = pt is not None and ct is not None
        if pt is None:
            pt = estimate_tokens(self._prompt_text(req))
        if ct is None:
            ct = estimate_tokens(text)
        lp, top = _parse_logprobs(choice.get("logprobs")) if req.get("logprobs") else (None, None)
        return Completion(text=text, prompt_tokens=int(pt), completion_tokens=int(ct),
                          logprobs=lp, top_logprobs=top if req.get("top_logprobs") else None,
                          finish_reason=choice.get("finish_reason"), latency_s=latency,
                          original_latency_s=latency), usage_reported

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

        Returns:
            The answer; when every attempt got an unusable reply (not JSON, truncated,
            `null` or blank text) a Completion with `ok` False and `error` set (not
            cached).

        Raises:
            CacheMiss: replay mode and no cached answer.
            BudgetExceeded: the request, or one of its retries, could pass the budget cap
                (that one was not sent; earlier attempts are in the ledger).
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

        Identical requests (same cache key) are asked once: the first is answered (from
        the cache or the API, one ledger row) and every other position gets a copy of that
        answer. Cache hits are answered first, without a thread. `sample_indices` (one per
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
        first: dict[str, int] = {}  # cache key -> first position asking it
        owner = [first.setdefault(request_key(r), i) for i, r in enumerate(reqs)]
        unique = sorted(set(owner))
        results: list[Completion | None] = [None] * len(reqs)
        with tqdm(total=len(unique), desc=desc or f"{self.name} {stage}", unit="call",
                  dynamic_ncols=True, mininterval=1.0, **({"disable": True} if not reqs else {})) as bar:
            todo = []
            for i in unique:
                hit = self._from_cache(reqs[i], stage)
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
                        errors += not comp.ok
                        bar.update(1)
                        if errors:
                            bar.set_postfix(errors=errors, refresh=False)
                finally:
                    ex.shutdown(wait=True, cancel_futures=True)
        out: list[Completion] = []
        for i, j in enumerate(owner):
            comp = results[j]
            assert comp is not None
            out.append(comp if i == j else _copy(comp))
        return out


@dataclass
class _Attempt:
    """What one HTTP request gave: a reply (maybe unusable) or an error, and its cost rule."""

    comp: Completion | None
    error: str | None
    retry: bool  # worth sending again
    charge: Literal["usage", "worst", "none"]  # reported usage / worst case / not billed
    latency_s: float
    retry_after: float | None = None


def _is_a(exc: BaseException | None, *names: str) -> bool:
    """Whether `exc` is an instance of a class named one of `names` (by name: the SDK may
    use `httpx` or its successor `httpx2`, whose classes have the same names)."""
    return exc is not None and any(c.__name__ in names for c in type(exc).__mro__)


def _never_sent(exc: BaseException | None) -> bool:
    """An HTTP-client error raised before the request left this machine (nothing to pay)."""
    return _is_a(exc, "ConnectError", "ConnectTimeout", "PoolTimeout", "LocalProtocolError",
                 "UnsupportedProtocol")


def _unsendable(exc: BaseException | None) -> bool:
    """A request this machine can never send as it is (an illegal header, e.g. a key with a
    line break inside; an unsupported URL scheme): retrying cannot help."""
    return _is_a(exc, "LocalProtocolError", "UnsupportedProtocol")


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int) else 0


def _copy(comp: Completion) -> Completion:
    """An independent copy of a completion (lists copied: callers may edit theirs)."""
    return dataclasses.replace(
        comp,
        logprobs=list(comp.logprobs) if comp.logprobs is not None else None,
        top_logprobs=[dict(d) for d in comp.top_logprobs] if comp.top_logprobs is not None
        else None)


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
