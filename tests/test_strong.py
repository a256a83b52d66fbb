"""StrongClient against a fake OpenAI-compatible server: retries, faults, budget, secrets."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from cowest.cache import BudgetExceeded, CacheMiss, Ledger, RequestCache
from cowest.strong import (
    Completion,
    StrongClient,
    StrongModelError,
    _derive_seed,
    _parse_logprobs,
    _retry_after_s,
)

try:  # tests/ as a package, or tests/ itself on sys.path (pytest's default "prepend")
    from tests.fakeserver import FakeOpenAI
except ImportError:  # pragma: no cover
    from fakeserver import FakeOpenAI  # type: ignore[no-redef]

SECRET = "sk-test-SECRET123"
KEY_ENV = "COWEST_TEST_STRONG_KEY"


@pytest.fixture
def fake():
    with FakeOpenAI() as f:
        yield f


def make(fake_or_url, tmp_path: Path, *, cache_mode="readwrite", budget=None, **kw) -> StrongClient:
    base_url = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.base_url
    db = tmp_path / "strong.sqlite"
    kw.setdefault("retry_base_s", 0.01)
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout_s", 5)
    return StrongClient("strong", "fake-gpt", base_url=base_url,
                        cache=RequestCache(db, mode=cache_mode),
                        ledger=Ledger(db, budget_usd=budget), **kw)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------------------------------
# the happy path
# ---------------------------------------------------------------------------------------


def test_chat_call_then_cache_hit_without_a_request(fake, tmp_path):
    c = make(fake, tmp_path, system_prompt="You are terse.")
    out = c.complete("What is 2+2?", stage="t")
    assert isinstance(out, Completion) and out.ok and not out.cached
    assert out.text == "echo: You are terse.\nWhat is 2+2?"
    assert (out.prompt_tokens, out.completion_tokens) == (11, 7)
    (req,) = fake.posts()
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["messages"] == [{"role": "system", "content": "You are terse."},
                                       {"role": "user", "content": "What is 2+2?"}]
    assert req["body"]["temperature"] == 0.0 and "seed" not in req["body"]
    assert req["body"]["repeat_penalty"] == 1.0  # loopback: plain greedy for llama.cpp
    again = c.complete("What is 2+2?", stage="t")
    assert again.cached and again.text == out.text and len(fake.posts()) == 1
    s = c.ledger.summary("t")[0]
    assert (s["calls"], s["cache_hits"], s["errors"]) == (2, 1, 0)


def test_completion_mode_and_sampling_seed(fake, tmp_path):
    c = make(fake, tmp_path, mode="completion", temperature=0.8, extra_body={})
    a = c.complete("Q: 1+1?\nA:", stage="t", sample_index=0, stop="\n")
    b = c.complete("Q: 1+1?\nA:", stage="t", sample_index=1, stop="\n")
    assert a.text == "echo: Q: 1+1?\nA:" and not a.cached and not b.cached
    r0, r1 = (r["body"] for r in fake.posts())
    assert fake.posts()[0]["path"] == "/v1/completions"
    assert r0["prompt"] == "Q: 1+1?\nA:" and r0["stop"] == ["\n"]
    assert r0["seed"] == _derive_seed(0) != r1["seed"] == _derive_seed(1)
    assert "repeat_penalty" not in r0
    with pytest.raises(TypeError):
        c.complete([{"role": "user", "content": "x"}], stage="t")


def test_complete_many_keeps_order_bounds_concurrency_and_uses_cache(fake, tmp_path):
    fake.rule("slow", {"sleep": 0.3})
    c = make(fake, tmp_path, concurrency=3)
    c.complete("slow 0", stage="t")
    prompts = [f"slow {i}" for i in range(7)]
    out = c.complete_many(prompts, stage="t", desc="test")
    assert [o.text for o in out] == [f"echo: {p}" for p in prompts]
    assert out[0].cached and not any(o.cached for o in out[1:])
    assert len(fake.posts()) == 7  # 1 + 6; the cached one was not resent
    assert 2 <= fake.max_in_flight <= 3


# ---------------------------------------------------------------------------------------
# retries
# ---------------------------------------------------------------------------------------


def test_429_waits_for_retry_after_then_succeeds(fake, tmp_path):
    fake.push({"status": 429, "headers": {"Retry-After": "1"}})
    c = make(fake, tmp_path)
    t0 = time.monotonic()
    out = c.complete("hi", stage="t")
    waited = time.monotonic() - t0
    assert out.ok and out.text == "echo: hi"
    posts = fake.posts()
    assert len(posts) == 2
    gap = posts[1]["t"] - posts[0]["t"]
    assert 0.95 <= gap < 2.0, gap  # honoured Retry-After, not the 10 ms backoff
    assert waited < 3


def test_500_until_retries_are_exhausted_raises_a_clear_error(fake, tmp_path):
    fake.push(*[{"status": 500}] * 10)
    c = make(fake, tmp_path, max_retries=2)
    with pytest.raises(StrongModelError) as ei:
        c.complete("hi", stage="t")
    msg = str(ei.value)
    assert len(fake.posts()) == 3
    for part in ("'fake-gpt'", fake.base_url, "3 attempt", "HTTP 500", "server running"):
        assert part in msg, (part, msg)
    assert c.ledger.totals()["errors"] == 1
    assert len(c.cache) == 0


def test_4xx_other_than_429_is_not_retried(fake, tmp_path):
    fake.push({"status": 400, "json": {"error": {"message": "context too long"}}})
    c = make(fake, tmp_path, max_retries=3)
    with pytest.raises(StrongModelError, match="not retried.*context too long"):
        c.complete("hi", stage="t")
    assert len(fake.posts()) == 1


def test_llama_cpp_logprobs_without_logits_all_is_not_retried(fake, tmp_path):
    fake.push({"status": 500, "json": {"error": {"message": "logprobs is not supported for "
                                                 "models created with logits_all=False"}}})
    with pytest.raises(StrongModelError, match="logits_all=True"):
        make(fake, tmp_path, max_retries=3).complete("hi", stage="t", logprobs=True)
    assert len(fake.posts()) == 1


def test_timeout_is_retried(fake, tmp_path):
    fake.push({"sleep": 1.5})
    c = make(fake, tmp_path, timeout_s=0.4)
    out = c.complete("hi", stage="t")
    assert out.ok and len(fake.posts()) == 2


def test_dropped_connection_is_retried(fake, tmp_path):
    fake.push({"close": True})
    out = make(fake, tmp_path).complete("hi", stage="t")
    assert out.ok and len(fake.posts()) == 2


def test_connection_refused_gives_a_clear_error(tmp_path):
    url = dead_url()
    c = make(url, tmp_path, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(StrongModelError) as ei:
        c.complete("hi", stage="t")
    msg = str(ei.value)
    assert url in msg and "connection failed" in msg and "2 attempt" in msg
    assert "server running" in msg
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------------------------------
# malformed and empty replies
# ---------------------------------------------------------------------------------------


def test_malformed_and_empty_replies_are_recorded_not_fatal_not_cached(fake, tmp_path):
    fake.rule("EMPTY", {"text": ""})
    fake.rule("NULL", {"content": None})
    fake.rule("NOCHOICE", {"choices": []})
    fake.rule("NOTJSON", {"body": b"<html>Bad gateway</html>"})
    fake.rule("HTMLTYPE", {"body": b"oops", "headers": {"Content-Type": "text/html"}})
    c = make(fake, tmp_path, concurrency=2)
    prompts = ["ok 1", "EMPTY", "NULL", "ok 2", "NOCHOICE", "NOTJSON", "HTMLTYPE"]
    out = c.complete_many(prompts, stage="collab")
    assert [o.ok for o in out] == [True, False, False, True, False, False, False]
    assert all(o.text == "" for o in out if not o.ok)
    assert "empty" in out[1].error and "None" in out[2].error
    assert "no choices" in out[4].error and "not JSON" in out[5].error
    s = c.ledger.summary("collab")[0]
    assert s["calls"] == 7 and s["errors"] == 5
    assert len(c.cache) == 2
    # a rerun asks again for the failed ones only
    n = len(fake.posts())
    c.complete_many(prompts, stage="collab")
    assert len(fake.posts()) == n + 5


# ---------------------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------------------


def test_budget_cap_raises_before_any_request(fake, tmp_path):
    c = make(fake, tmp_path, budget=0.01, price_in=10.0, price_out=30.0, max_tokens=100)
    # worst case: 1000 in * 10/1M + 100 out * 30/1M = 0.013 > 0.01
    with pytest.raises(BudgetExceeded, match="Nothing was sent"):
        c.complete("x" * 4000, stage="t")
    assert fake.posts() == []
    # a small call fits; the spent money then counts against the next one
    ok = c.complete("short", stage="t")  # 11 * 10 + 7 * 30 = 320e-6
    assert ok.ok and c.ledger.spent() == pytest.approx(320e-6)
    c2 = make(fake, tmp_path, budget=0.0034, price_in=10.0, price_out=30.0, max_tokens=100)
    with pytest.raises(BudgetExceeded) as ei:
        c2.complete("y" * 40, stage="t")  # 0.00032 + 1e-4 + 3e-3 > 0.0034
    assert "$0.0003 spent" in str(ei.value)
    assert len(fake.posts()) == 1
    # a cached answer needs no budget
    assert c2.complete("short", stage="t").cached


def test_complete_many_stops_on_budget(fake, tmp_path):
    c = make(fake, tmp_path, budget=0.001, price_in=10.0, price_out=30.0, max_tokens=10)
    with pytest.raises(BudgetExceeded):
        c.complete_many([f"p{i}" for i in range(20)], stage="t")
    # each call's worst case is ~3e-4 until real costs (3.2e-4 each) are recorded
    assert 1 <= len(fake.posts()) <= 3


# ---------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------


def test_api_key_never_leaks(fake, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    # the fake echoes the key in its 401 message, as some providers do
    fake.rule("UNAUTH", {"status": 401, "json": {"error": {
        "message": f"Incorrect API key provided: {SECRET}."}}})
    fake.rule("BROKEN", {"status": 503})
    fake.rule("EMPTY", {"text": ""})
    c = make(fake, tmp_path, api_key_env=KEY_ENV, max_retries=1)
    assert c.complete("hello", stage="t", logprobs=True, top_logprobs=2).ok
    c.complete_many(["a", "EMPTY", "b"], stage="t")
    errors = []
    for p in ("UNAUTH", "BROKEN"):
        with pytest.raises(StrongModelError) as ei:
            c.complete(p, stage="t")
        errors.append(ei.value)
    assert "Incorrect API key provided: ***" in str(errors[0])
    c.cache.export_jsonl(tmp_path / "ship" / "cache.jsonl")
    c.cache.export_jsonl(tmp_path / "ship" / "cache.jsonl.gz")
    # the key was really used...
    assert all(r["headers"].get("authorization") == f"Bearer {SECRET}" for r in fake.posts())
    # ...and is nowhere else
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(c), repr(c.cache),
                                                                    repr(c.ledger), str(vars(c))]
    for t in texts:
        assert SECRET not in t
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".gz") for p in files) and len(files) >= 3
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    for row in c.ledger.calls():
        assert SECRET not in str(row)


def test_missing_key_is_a_clear_error_but_replay_needs_none(fake, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    c = make(fake, tmp_path, api_key_env=KEY_ENV)
    with pytest.raises(StrongModelError, match=f"{KEY_ENV}.*not set"):
        c.complete("hi", stage="t")
    assert fake.posts() == []
    monkeypatch.setenv(KEY_ENV, SECRET)
    make(fake, tmp_path, api_key_env=KEY_ENV).complete("hi", stage="t")
    monkeypatch.delenv(KEY_ENV)
    replay = make(dead_url(), tmp_path, api_key_env=KEY_ENV, cache_mode="replay")
    assert replay.complete("hi", stage="t").cached
    with pytest.raises(CacheMiss, match="fake-gpt"):
        replay.complete("something new", stage="t")


# ---------------------------------------------------------------------------------------
# parsing helpers
# ---------------------------------------------------------------------------------------


def test_logprobs_both_shapes_through_the_client(fake, tmp_path):
    chat_lp = {"content": [
        {"token": "Yes", "logprob": -0.1, "top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                           {"token": "No", "logprob": -2.4}]},
        {"token": ".", "logprob": -0.5, "top_logprobs": []}]}
    comp_lp = {"tokens": ["Yes", "."], "token_logprobs": [-0.1, -0.5], "text_offset": [0, 3],
               "top_logprobs": [{"Yes": -0.1, "No": -2.4}, {".": -0.5}]}
    fake.rule("chat", {"text": "Yes.", "logprobs": chat_lp})
    fake.rule("comp", {"text": "Yes.", "logprobs": comp_lp})
    a = make(fake, tmp_path).complete("chat", stage="t", logprobs=True, top_logprobs=2)
    assert fake.posts()[-1]["body"]["logprobs"] is True
    assert fake.posts()[-1]["body"]["top_logprobs"] == 2
    b = make(fake, tmp_path, mode="completion").complete("comp", stage="t", logprobs=True,
                                                         top_logprobs=2)
    assert fake.posts()[-1]["body"]["logprobs"] == 2
    for out in (a, b):
        assert out.logprobs == [("Yes", -0.1), (".", -0.5)]
        assert out.top_logprobs[0] == {"Yes": -0.1, "No": -2.4}
    # cached answers keep them
    again = make(fake, tmp_path, mode="completion").complete("comp", stage="t", logprobs=True,
                                                             top_logprobs=2)
    assert again.cached and again.logprobs == b.logprobs
    assert _parse_logprobs(None) == (None, None)


def test_retry_after_parsing():
    assert _retry_after_s({"retry-after": "2"}) == 2.0
    assert _retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert _retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert _retry_after_s({"retry-after": "soon"}) is None
    assert _retry_after_s({}) is None
