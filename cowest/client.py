"""The strong-model client: one job, calling an OpenAI-compatible endpoint well.

The strong model of CoWest is reached only through an API (GPT-4 in the paper).
[`StrongClient`] calls any OpenAI-compatible endpoint (OpenAI, a vLLM or llama.cpp
server, ...) through the official `openai` SDK, in chat or text-completion mode, with its
own retry loop (exponential backoff with jitter, honouring `Retry-After`), a persistent
[`RequestCache`](cowest.cache.RequestCache), a [`Ledger`](cowest.ledger.Ledger) of every
call with a budget cap, bounded concurrency and token log-probabilities. Build it from a
profile with [`StrongClient.from_spec`]. Its answers are
[`Completion`](cowest.replies.Completion)s; parsing replies and hiding the API key in
every message is [`cowest.replies`]'s job (see there for what "scrubbed" covers).

Endpoints ([`cowest.endpoint`]): the base URL of an API, or local servers (a
[`ServerPool`](cowest.server.ServerPool)) that the client starts on the first request its
cache cannot answer (a rerun whose calls are all cached starts none); each request then
goes to a server that no other request of this client is using.

Failures (each request sent is one row of the ledger, see [`cowest.ledger.Ledger`]):

- transport errors (connection refused or reset, timeouts), HTTP 429 and 5xx are retried
  up to `max_retries` times; HTTP 429/503 wait at least what `Retry-After` says. Other 4xx
  (bad request, wrong key, unknown model) are not retried. When the call gives up it
  raises [`StrongModelError`].
- a reply that arrives but is unusable (not JSON, truncated, no choices, `null` content)
  is a failed attempt too: it is retried the same way, and if the last attempt is still
  unusable the call returns a `Completion` whose `ok` is False (`error` says why, `text`
  is `""`). Such a reply is never cached, so a rerun sends exactly the failed requests
  again and never the answered ones.
- a well-formed reply whose text is empty or blank (a string text and a `finish_reason`,
  e.g. a completion-mode model that stops at once on its stop sequence) is asked again
  at most [`BLANK_RETRIES`] = 1 time (`min(1, max_retries)`: a flaky server may send one
  blank reply, but a model at temperature 0 repeats itself, so more retries only cost).
  If the retry gives text, that is the answer (a failed retry is handled as above); if
  it is blank again (or a blank reply comes on the last attempt), that is the model's
  answer: returned with `error=None` and `blank=True` (`ok` is False: no usable text),
  and cached like any answer, so a rerun sends nothing. The retried blank attempt is a failed request in the
  ledger (its row's `error` says so); the accepted one is not.
- with a budget cap, a request whose worst case (see
  [`prompt_token_bound`](cowest.ledger.prompt_token_bound) plus `max_tokens`) could pass
  the cap raises [`BudgetExceeded`](cowest.ledger.BudgetExceeded) before it is sent; each
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
of the request, see [`Endpoint.identity`](cowest.endpoint.Endpoint.identity)): never a
port. A local model named after an offline asset answers from exactly that asset's pinned
file, so for it the identity adds nothing and is left out: such keys are those of earlier
versions. Keys of API models changed when the identity was added.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from cowest.cache import CacheMiss, RequestCache, request_key
from cowest.endpoint import Endpoint, Servers, pinned_identity
from cowest.ledger import Ledger, prompt_token_bound
from cowest.replies import Completion, copy_completion, key_hider, scrub_secret, send_once

if TYPE_CHECKING:
    from cowest.config import StrongSpec

__all__ = ["StrongClient", "StrongModelError", "UnpricedModelError"]

Prompt = str | list[dict[str, Any]]

_PLACEHOLDER_KEY = "sk-local"
#: Retry backoff: `min(RETRY_MAX_S, RETRY_BASE_S * 2**k)` times a jitter in [0.5, 1]; a
#: `Retry-After` header is honoured up to `RETRY_AFTER_MAX_S`. Not profile settings.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0
#: Retries of a well-formed blank reply, at most (and never more than `max_retries`): a
#: model at temperature 0 gives the same blank answer again, a flaky server rarely twice.
BLANK_RETRIES = 1


class StrongModelError(RuntimeError):
    """The strong model could not be reached or refused the request (after any retries)."""


class UnpricedModelError(StrongModelError, ValueError):
    """An API model without prices, not declared free: no budget cap could limit it."""


def _derive_seed(sample_index: int) -> int:
    """A fixed 31-bit seed per sample index (sampling is reproducible where servers allow)."""
    digest = hashlib.sha256(f"cowest-sample-{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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
        endpoint: where the model answers: the API root as a string (e.g.
            `"https://api.openai.com/v1"`), or local [`Servers`] (a `LocalServer` or a
            `ServerPool`), started on the first request the cache cannot answer. Not
            part of the cache key as such: see `endpoint_id`.
        api_key_env: the environment variable that holds the API key; `None` for a local
            server (a placeholder key is sent). The variable is read on the first request
            that is not answered from the cache, so replay needs no key.
        mode: `"chat"` (`chat.completions`) or `"completion"` (legacy `completions`, for
            base models such as Gemma-270M, and for FLARE's token log-probabilities).
        max_tokens / temperature / top_p: default sampling; per-call overrides exist for
            `max_tokens` and `temperature`.
        timeout_s: per-attempt HTTP timeout.
        max_retries: retries after the first attempt (so `max_retries + 1` attempts); of
            these, at most `min(BLANK_RETRIES, max_retries)` = `min(1, max_retries)` after
            a well-formed blank reply (see the module doc).
        concurrency: threads used by [`complete_many`] (a llama.cpp server answers one
            request at a time: for local servers, as many as there are servers).
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
            default: `endpoint_identity` of a URL, the `identity` of local servers
            ([`LocalServer.identity`](cowest.server.LocalServer.identity): not a port).
        retry_base_s / retry_max_s: backoff `min(retry_max_s, retry_base_s * 2**k)`, times
            a jitter factor in [0.5, 1]; a `Retry-After` header is honoured (at least that
            long, at most `retry_after_max_s`). Not profile settings: module constants.
    """

    def __init__(
        self,
        name: str,
        model: str,
        *,
        endpoint: str | Servers,
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
        self.name, self.model, self.mode = name, model, mode
        self.endpoint = Endpoint(endpoint)
        self.api_key_env = api_key_env
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.concurrency = max(1, int(concurrency))
        self.price_in, self.price_out, self.free = price_in, price_out, bool(free)
        if not self.free and not price_in and not price_out:
            raise UnpricedModelError(
                f"strong_models.{name}: model {model!r} at {self.endpoint.describe()} has "
                "no prices (price_in_per_mtok and price_out_per_mtok are both 0), so no "
                "budget cap could limit what it spends. Set price_in_per_mtok and "
                "price_out_per_mtok (USD per 1M tokens) in that profile entry, or free: true "
                "if it is a server you run yourself.")
        self.endpoint_id = endpoint_id or self.endpoint.identity
        # in the key unless the model name already pins it (keys of earlier versions)
        self._key_server = (None if self.endpoint_id == pinned_identity(model)
                            else self.endpoint_id)
        self.cache, self.ledger = cache, ledger
        self.system_prompt = system_prompt
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.retry_after_max_s = retry_after_max_s
        self.extra_body: dict[str, Any] = dict(extra_body)
        self._sdks: dict[str, Any] = {}  # base URL -> openai.OpenAI
        self._sdk_lock = threading.Lock()
        self._hide_key: Callable[[str], str] = lambda text: text

    def __repr__(self) -> str:
        return (f"StrongClient(name={self.name!r}, model={self.model!r}, endpoint="
                f"{self.endpoint.describe()!r}, mode={self.mode!r}, "
                f"api_key_env={self.api_key_env!r})")

    @property
    def base_url(self) -> str | None:
        """The API root, or the first local server's once started (else None)."""
        return self.endpoint.base_url

    @classmethod
    def from_spec(cls, spec: StrongSpec, *, endpoint: str | Servers, cache: RequestCache,
                  ledger: Ledger) -> "StrongClient":
        """The client a profile's strong-model entry describes.

        Every client setting of `spec` is used: name, model, mode, max_tokens,
        temperature, top_p, system_prompt, extra_body, timeout_s, max_retries,
        concurrency, price_in_per_mtok, price_out_per_mtok, and api_key_env and free
        (backend `"api"` only: a local server needs no key and is free). An API entry
        with both prices 0 and `free: false` raises [`UnpricedModelError`].

        `endpoint`: `spec.base_url` for backend `"api"`; for `"local"`, the
        [`ServerPool`](cowest.server.ServerPool) built from `spec` (started at the first
        cache miss), or the URL of a running server, whose identity in the cache key is
        then that of the offline asset `spec.model` (`"local:<model>"` for a name that is
        no asset, such as a test's fake server). For backend `"local"` the request body is
        the server's [`request_defaults`](cowest.server.LocalServer.request_defaults)
        (llama.cpp plain sampling) updated with `spec.extra_body`, so a profile can
        override any of them; for `"api"` it is `spec.extra_body` alone.
        """
        endpoint_id: str | None = None
        if spec.backend == "local":
            from cowest.server import LocalServer

            extra_body = {**LocalServer.request_defaults, **spec.extra_body}
            api_key_env, free = None, True
            endpoint_id = (endpoint.identity if not isinstance(endpoint, str)
                           else pinned_identity(spec.model) or f"local:{spec.model}")
        else:
            if not isinstance(endpoint, str):
                raise TypeError(f"strong model {spec.name!r}: backend 'api' takes the API's "
                                f"base URL as endpoint, not {type(endpoint).__name__}")
            extra_body, api_key_env, free = dict(spec.extra_body), spec.api_key_env, spec.free
        return cls(
            spec.name, spec.model, endpoint=endpoint, cache=cache, ledger=ledger,
            api_key_env=api_key_env, mode=spec.mode, max_tokens=spec.max_tokens,
            temperature=spec.temperature, top_p=spec.top_p, timeout_s=spec.timeout_s,
            max_retries=spec.max_retries, concurrency=spec.concurrency,
            price_in=spec.price_in_per_mtok, price_out=spec.price_out_per_mtok, free=free,
            system_prompt=spec.system_prompt, extra_body=extra_body, endpoint_id=endpoint_id,
        )

    # -- plumbing ------------------------------------------------------------------------

    def _sdk(self, url: str) -> Any:
        """The `openai.OpenAI` client of `url`, made on first use (the key is read then)."""
        with self._sdk_lock:
            if url not in self._sdks:
                import openai

                if self.api_key_env:
                    raw = os.environ.get(self.api_key_env, "")
                    key = raw.strip()  # a key read from a file often ends in a newline
                    if not key:
                        raise StrongModelError(
                            f"{self.name}: the environment variable {self.api_key_env} that "
                            f"should hold the API key for {self.endpoint.describe()} is not "
                            f"set (or empty). Export it before running, e.g. export "
                            f"{self.api_key_env}=..., or use a cache in replay mode."
                        )
                    # scrub the key actually used, even if the environment changes later
                    self._hide_key = key_hider(raw, key)
                else:
                    key = _PLACEHOLDER_KEY
                self._sdks[url] = openai.OpenAI(base_url=url, api_key=key,
                                                timeout=self.timeout_s, max_retries=0)
            return self._sdks[url]

    def _scrub(self, text: str) -> str:
        """`text` with the API key (the one used, and the environment's) replaced by `***`."""
        text = self._hide_key(text)
        if self.api_key_env:
            text = scrub_secret(text, os.environ.get(self.api_key_env))
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

    # -- one call ------------------------------------------------------------------------

    def _from_cache(self, req: Mapping[str, Any], stage: str) -> Completion | None:
        hit = self.cache.get(req)  # raises CacheMiss in replay mode
        if hit is None:
            return None
        comp = Completion.from_cache(hit)
        if not comp.text.strip() and not comp.blank:
            # blank text not marked as the model's answer: written by an earlier version
            # (this one caches answers only, a blank one with `blank` set)
            if self.cache.mode == "replay":
                raise CacheMiss(f"replay mode is on and the cache {self.cache.path} holds only "
                                f"an unusable blank answer (of an earlier version) for model "
                                f"{self.model!r} (key {request_key(req)[:12]}); set the cache "
                                "mode to 'readwrite' to ask again.")
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
        ledger before the budget hold is released; only an answer is cached (a blank one
        too, once asked again: see the module doc).
        """
        worst = self.worst_case_cost(req)
        n_attempts = self.max_retries + 1
        blank_retries = min(BLANK_RETRIES, self.max_retries)
        blanks = 0  # well-formed blank replies so far
        for attempt in range(1, n_attempts + 1):
            with self.ledger.reserve(self.model, worst):
                # after the budget check: a refused call needs no key and starts no server
                with self.endpoint.lease() as url:
                    out = send_once(self._sdk(url), req, timeout_s=self.timeout_s,
                                    scrub=self._scrub)
                comp = out.comp
                error = out.error
                again = False  # a blank reply, asked again
                if error is None and comp is not None and comp.blank:
                    blanks += 1
                    again = blanks <= blank_retries and attempt < n_attempts
                    if again:
                        error = self._scrub(
                            f"blank reply (text {comp.text!r}, finish_reason "
                            f"{comp.finish_reason!r}); asked again (at most {blank_retries} "
                            "time(s)), then taken as the model's answer")
                final = not again and (out.error is None or not out.retry
                                       or attempt == n_attempts)
                self.ledger.record(
                    stage, self.model, cached=False,
                    prompt_tokens=comp.prompt_tokens if comp is not None else 0,
                    completion_tokens=comp.completion_tokens if comp is not None else 0,
                    latency_s=out.latency_s, error=error, price_in=self.price_in,
                    price_out=self.price_out,
                    cost_usd={"usage": None, "worst": worst, "none": 0.0}[out.charge],
                    attempt=attempt, final=final)
            if out.error is None and comp is not None and not again:
                self.cache.put(req, comp.to_cache())  # an answer, blank or not
                return comp
            if final:
                break
            time.sleep(self._backoff_s(attempt, out.retry_after))  # holding no server
        error = out.error or "unknown error"
        if comp is not None and out.retry:  # replies came, none usable: not an exception
            comp.error = (f"{error} (after {attempt} attempt(s), max_retries="
                          f"{self.max_retries}; not cached: a rerun asks again)")
            comp.text = ""
            return comp
        raise StrongModelError(self._fail_message(attempt, error, retryable=out.retry))

    def _fail_message(self, attempts: int, last_error: str, *, retryable: bool) -> str:
        what = (f"gave up after {attempts} attempt(s) (max_retries={self.max_retries})"
                if retryable else "the request was refused (not retried)")
        checks = [f"is the server running and reachable at {self.endpoint.describe()}?"]
        if self.api_key_env:
            checks.append(f"is the environment variable {self.api_key_env} set to a valid key?")
        checks.append(f"does the endpoint serve the model {self.model!r} in {self.mode} mode?")
        return self._scrub(
            f"strong model {self.name!r} (model {self.model!r} at {self.endpoint.describe()}, "
            f"{self.mode} endpoint): {what}; last error: {last_error}. Check: "
            + " ".join(checks)
        )

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
            The answer; when every attempt got an unusable reply (not JSON, truncated, no
            choices, `null` content) a Completion with `ok` False and `error` set (not
            cached). A well-formed blank reply that stays blank through its
            `min(1, max_retries)` retry is the answer: `blank` True, `error` None, `ok`
            False, cached.

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
        [`complete`]. An exception of one call (`StrongModelError`, `BudgetExceeded`,
        `LocalServerError` when local servers cannot start) cancels the calls not yet
        started and is raised; answers already received are in the cache. A batch
        answered entirely from the cache sends nothing and starts no server.
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
                errors = blanks = 0
                ex = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"strong-{self.name}")
                try:
                    futures = {ex.submit(self._call, reqs[i], stage): i for i in todo}
                    for fut in as_completed(futures):
                        comp = fut.result()
                        results[futures[fut]] = comp
                        errors += comp.error is not None  # a blank answer is no error
                        blanks += comp.blank
                        bar.update(1)
                        if errors or blanks:
                            bar.set_postfix(errors=errors, blank=blanks, refresh=False)
                finally:
                    ex.shutdown(wait=True, cancel_futures=True)
        out: list[Completion] = []
        for i, j in enumerate(owner):
            comp = results[j]
            assert comp is not None
            out.append(comp if i == j else copy_completion(comp))
        return out
