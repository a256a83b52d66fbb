"""Replies of the strong model: one job, one request sent and what its reply means.

- [`Completion`]: one answer (text, token counts, log-probabilities, cached or not, error).
- [`parse_reply`]: a reply body as a Completion; an unusable reply (not JSON, truncated, no
  choices, `null` content) is one whose `error` says why. A well-formed reply whose text is
  empty or blank is not an error: it is marked [`Completion.blank`] (the client asks again
  at most once, then takes it as the model's answer).
  [`parse_logprobs`] reads token log-probabilities of either reply shape.
- [`send_once`]: one HTTP request through the `openai` SDK, and what it gave as an
  [`Attempt`]: an answer, an unusable reply, or a failure, classified: worth a retry or
  not, and how it is charged (reported usage, worst case, or nothing: [`never_sent`],
  HTTP 4xx). [`unsendable`] requests and [`PERMANENT_ERRORS`] are not retried;
  [`retry_after_s`] is how long the server asks to wait.
- Secrets: [`scrub_secret`], [`key_hider`], [`secret_forms`]. The API key is read only from the
  environment variable named by `api_key_env`, stripped of surrounding whitespace (a key
  read from a file often ends in a newline). It is handed to the SDK and nowhere else: it
  is not an attribute of the client, not in its repr, not in the cache key or the cache
  file, not in the ledger and not in any error message. Every message the client produces
  (`Completion.error`, `StrongModelError`, the ledger's error column) is scrubbed of every
  representation of the key: as is, escaped (`repr`, JSON, a bytes repr such as
  `b'Bearer sk-...\\n'`), URL-encoded, with or without a trailing `\\n`/`\\r\\n`, and
  the bare key itself, so no fragment longer than `***` remains.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Mapping
from urllib.parse import quote, quote_plus

from cowest.ledger import estimate_tokens

__all__ = [
    "PERMANENT_ERRORS",
    "Attempt",
    "Completion",
    "copy_completion",
    "key_hider",
    "never_sent",
    "parse_logprobs",
    "parse_reply",
    "retry_after_s",
    "scrub_secret",
    "sdk_kwargs",
    "secret_forms",
    "send_once",
    "unsendable",
]

#: Server errors (HTTP 5xx) that no retry can fix.
PERMANENT_ERRORS = ("logits_all=False",)


# ---------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------


def secret_forms(secret: str) -> list[str]:
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


def key_hider(*secrets: str) -> Callable[[str], str]:
    """A function that replaces every form of each of `secrets` by `***` (a closure: the
    secrets are in no attribute, repr or `vars()` of whoever holds it)."""
    forms = sorted({f for s in secrets for f in secret_forms(s)}, key=len, reverse=True)

    def hide(text: str) -> str:
        for form in forms:
            text = text.replace(form, "***")
        return text

    return hide


def scrub_secret(text: str, secret: str | None) -> str:
    """`text` with every representation of `secret` replaced by `***`."""
    if secret:
        for form in secret_forms(secret):
            text = text.replace(form, "***")
    return text


# ---------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------


@dataclass
class Completion:
    """One answer of the strong model.

    A completion is usable when [`ok`](Completion.ok): no `error` and some non-blank
    text. The client never returns an unusable one (`error` set) as if it were an answer,
    and never caches one. A `blank` answer is neither: the model answered, with nothing
    (not `ok`, but not an error either; cached like any answer).

    Args:
        text: the generated text (`""` when `error` is set; as received, empty or blank,
            when `blank`).
        prompt_tokens / completion_tokens: token counts reported by the server (estimated
            as `len(text)/4` when the server reports no usage; the ledger then charges the
            request at its worst case).
        logprobs: `[(token, logprob), ...]` of the generated tokens when they were asked
            for and the server returned them, else `None`.
        top_logprobs: per generated token, `{token: logprob}` of the most likely
            alternatives (when `top_logprobs > 0` was asked), else `None`.
        cached: answered from the cache (no request was sent).
        error: why the reply is unusable (malformed, truncated, no choices, `null`
            content, after every retry), else `None`.
        latency_s: seconds of the successful HTTP attempt (0 for a cache hit; as it was
            measured when first asked, in `original_latency_s`).
        finish_reason: as reported (`"stop"`, `"length"`, ...).
        blank: the reply was well-formed (a string text and a `finish_reason`) but its
            text is empty or only whitespace. Returned by the client (with `error` `None`)
            once the `min(1, max_retries)` retry was blank too: the model's answer (e.g. a
            completion-mode model that stops at once on its stop sequence).
        answer_pass: the text is an output without its answer line (cut by the token limit,
            or ended without it), followed by the answer line that a second, short call gave
            ([`Collaborator`](cowest.collaborate.Collaborator); never cached as one reply).
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
    blank: bool = False
    answer_pass: bool = False  # the answer line came from a second call (`cowest.collaborate`)

    @property
    def ok(self) -> bool:
        """A usable answer: no error, and text that is not empty or only whitespace (a
        [`blank`](Completion.blank) answer is not ok, and not an error either)."""
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
            blank=bool(d.get("blank", False)),
            cached=True,
            latency_s=0.0,
        )


def copy_completion(comp: Completion) -> Completion:
    """An independent copy of a completion (lists copied: callers may edit theirs)."""
    return dataclasses.replace(
        comp,
        logprobs=list(comp.logprobs) if comp.logprobs is not None else None,
        top_logprobs=[dict(d) for d in comp.top_logprobs] if comp.top_logprobs is not None
        else None)


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int) else 0


# ---------------------------------------------------------------------------------------
# parsing a reply
# ---------------------------------------------------------------------------------------


def parse_reply(body: bytes, req: Mapping[str, Any], latency: float,
                scrub: Callable[[str], str]) -> tuple[Completion, bool]:
    """A reply body as a Completion (unusable replies set `error`), and whether the
    server reported its usage. `scrub` hides the API key in every message.

    A well-formed reply (a string text or message content and a string `finish_reason`)
    whose text is empty or blank is a Completion with `blank=True` and no `error`; blank
    text without a `finish_reason` (the generation may not have ended) is unusable."""
    def excerpt(text: str, n: int) -> str:  # scrubbed first, so no key is cut in half
        return scrub(text)[:n]

    def bad(why: str, pt: Any = None, ct: Any = None) -> tuple[Completion, bool]:
        usage = pt is not None and ct is not None
        return Completion(text="", prompt_tokens=_int(pt), completion_tokens=_int(ct),
                          error=scrub(why), latency_s=latency), usage

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace")
        return bad(f"malformed reply (not JSON; truncated?): {excerpt(text, 120)!r}")
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
            why += f"; error: {excerpt(json.dumps(data['error']), 200)}"
        return bad(f"malformed reply: {why}", pt, ct)
    choice = choices[0]
    if req["endpoint"] == "chat":
        msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = msg.get("content")
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        return bad(f"malformed reply: content is {text!r}", pt, ct)
    finish = choice.get("finish_reason")
    blank = not text.strip()
    if blank and not isinstance(finish, str):
        return bad(f"empty reply (blank text {text!r}, finish_reason {finish!r})", pt, ct)
    usage_reported = pt is not None and ct is not None
    if pt is None:
        pt = estimate_tokens(_prompt_text(req))
    if ct is None:
        ct = estimate_tokens(text)
    lp, top = parse_logprobs(choice.get("logprobs")) if req.get("logprobs") else (None, None)
    return Completion(text=text, prompt_tokens=int(pt), completion_tokens=int(ct),
                      logprobs=lp, top_logprobs=top if req.get("top_logprobs") else None,
                      finish_reason=finish, latency_s=latency,
                      original_latency_s=latency, blank=blank), usage_reported


def _prompt_text(req: Mapping[str, Any]) -> str:
    if "prompt" in req:
        return req["prompt"]
    return "\n".join(str(m.get("content") or "") for m in req["messages"])


def parse_logprobs(lp: Any) -> tuple[list[tuple[str, float | None]] | None,
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
# one attempt, and what a failed one means
# ---------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """What one HTTP request gave: a reply (maybe unusable, maybe `blank`: see
    `comp.blank`, which the client may ask again) or an error, and its cost rule."""

    comp: Completion | None
    error: str | None
    retry: bool  # worth sending again
    charge: Literal["usage", "worst", "none"]  # reported usage / worst case / not billed
    latency_s: float
    retry_after: float | None = None


def sdk_kwargs(req: Mapping[str, Any]) -> dict[str, Any]:
    """The SDK `create` arguments of a request dict (`StrongClient.build_request`'s)."""
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


def send_once(sdk: Any, req: Mapping[str, Any], *, timeout_s: float,
              scrub: Callable[[str], str]) -> Attempt:
    """Send one request dict with the `openai.OpenAI` client `sdk`; classify what happened
    (never raises an SDK error). `scrub` hides the API key in every message."""
    import openai

    def excerpt(text: str, n: int) -> str:
        return scrub(text)[:n]

    t0 = time.monotonic()

    def failed(error: str, *, retry: bool, charge: str,
               retry_after: float | None = None) -> Attempt:
        return Attempt(None, scrub(error), retry, charge,  # type: ignore[arg-type]
                       time.monotonic() - t0, retry_after)

    api = sdk.chat.completions if req["endpoint"] == "chat" else sdk.completions
    try:
        raw = api.with_raw_response.create(**sdk_kwargs(req))
        body = raw.http_response.content
    except openai.APIStatusError as e:
        status = e.status_code
        error = f"HTTP {status}: {excerpt(str(e.message), 300)}"
        permanent = any(p in str(e.message) for p in PERMANENT_ERRORS)
        if permanent:
            error += (" (a llama.cpp server gives log-probabilities only when started "
                      "with logits_all=True)")
        retry = (status == 429 or status >= 500) and not permanent
        headers = e.response.headers if e.response is not None else None
        # a 4xx is a refusal before any generation: not billed by providers
        return failed(error, retry=retry, charge="none" if status < 500 else "worst",
                      retry_after=retry_after_s(headers) if retry else None)
    except openai.APITimeoutError as e:
        sent = not never_sent(e.__cause__)
        return failed(f"no answer within the timeout of {timeout_s:g} s"
                      + ("" if sent else " (could not connect)"),
                      retry=True, charge="worst" if sent else "none")
    except openai.APIConnectionError as e:
        cause = e.__cause__ or e
        sent = not never_sent(cause)
        return failed(f"connection failed ({type(cause).__name__}: "
                      f"{excerpt(str(cause), 300)})", retry=not unsendable(cause),
                      charge="worst" if sent else "none")
    except openai.OpenAIError as e:  # anything else the SDK raises: not retried
        return failed(f"{type(e).__name__}: {excerpt(str(e), 300)}", retry=False,
                      charge="worst")
    latency = time.monotonic() - t0
    comp, usage = parse_reply(body, req, latency, scrub)
    return Attempt(comp, comp.error, comp.error is not None,
                    "usage" if usage else "worst", latency)


def _is_a(exc: BaseException | None, *names: str) -> bool:
    """Whether `exc` is an instance of a class named one of `names` (by name: the SDK may
    use `httpx` or its successor `httpx2`, whose classes have the same names)."""
    return exc is not None and any(c.__name__ in names for c in type(exc).__mro__)


def never_sent(exc: BaseException | None) -> bool:
    """An HTTP-client error raised before the request left this machine (nothing to pay)."""
    return _is_a(exc, "ConnectError", "ConnectTimeout", "PoolTimeout", "LocalProtocolError",
                 "UnsupportedProtocol")


def unsendable(exc: BaseException | None) -> bool:
    """A request this machine can never send as it is (an illegal header, e.g. a key with a
    line break inside; an unsupported URL scheme): retrying cannot help."""
    return _is_a(exc, "LocalProtocolError", "UnsupportedProtocol")


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
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
