"""StrongClient against a fake OpenAI-compatible server: retries, faults, budget, secrets;
and the profile -> object wiring of StrongClient.from_spec and LocalServer.from_spec."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import socket
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from cowest import assets
from cowest.cache import CacheMiss, RequestCache, request_key
from cowest.client import StrongClient, StrongModelError, UnpricedModelError, _derive_seed
from cowest.config import StrongSpec
from cowest.endpoint import endpoint_identity
from cowest.ledger import BudgetExceeded, Ledger
from cowest.replies import Completion, parse_logprobs, retry_after_s, scrub_secret
from cowest.server import LLAMA_CPP_PLAIN_SAMPLING, LocalServer, ServerPool

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


def make(fake_or_url, tmp_path: Path, *, cache_mode="readwrite", budget=None, backend="local",
         **fields: Any) -> StrongClient:
    """A client built from a `StrongSpec` as the pipeline builds it, with fast retries.

    `fields` are StrongSpec fields. Backend "local" (the default) treats the fake as a local
    llama.cpp server (its request defaults are sent); backend "api" sends only the spec's
    (and is declared free unless prices are given: an unpriced API model is refused).
    """
    base_url = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.base_url
    db = tmp_path / "strong.sqlite"
    fields.setdefault("max_retries", 2)
    fields.setdefault("timeout_s", 5)
    if backend == "api" and not fields.get("price_in_per_mtok") and not fields.get(
            "price_out_per_mtok"):
        fields.setdefault("free", True)
    spec = StrongSpec(name="strong", model="fake-gpt", backend=backend,
                      base_url=base_url if backend == "api" else None, **fields)
    client = StrongClient.from_spec(spec, endpoint=base_url,
                                    cache=RequestCache(db, mode=cache_mode),
                                    ledger=Ledger(db, budget_usd=budget))
    client.retry_base_s = 0.01  # not a profile setting
    return client


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
    assert req["body"]["repeat_penalty"] == 1.0  # local backend: plain greedy for llama.cpp
    again = c.complete("What is 2+2?", stage="t")
    assert again.cached and again.text == out.text and len(fake.posts()) == 1
    s = c.ledger.summary("t")[0]
    assert (s["calls"], s["cache_hits"], s["errors"]) == (2, 1, 0)


def test_completion_mode_and_sampling_seed(fake, tmp_path):
    c = make(fake, tmp_path, backend="api", mode="completion", temperature=0.8)
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
# local servers: started on the first miss, one request per server at a time
# ---------------------------------------------------------------------------------------


class FakeServers:
    """Local [`Servers`] made of fake OpenAI servers: started (entered) by `start()`, which
    counts how often it really started them; one GGUF identity for all, as a ServerPool."""

    identity = "local:" + "f" * 64

    def __init__(self, n: int, fail: Exception | None = None) -> None:
        self.fakes = [FakeOpenAI() for _ in range(n)]
        self.starts = 0
        self.fail = fail
        self.started = 0

    def start(self) -> "FakeServers":
        if not self.started:
            self.starts += 1
            if self.fail is not None:
                raise self.fail
            for f in self.fakes:
                f.__enter__()
            self.started = len(self.fakes)
        return self

    @property
    def base_urls(self) -> list[str]:
        return [f.base_url for f in self.fakes]

    def stop(self) -> None:
        if self.started:
            for f in self.fakes:
                f.__exit__(None, None, None)
        self.started = 0


@pytest.fixture
def servers():
    made: list[FakeServers] = []

    def make_servers(n: int, **kw: Any) -> FakeServers:
        made.append(FakeServers(n, **kw))
        return made[-1]

    yield make_servers
    for m in made:
        m.stop()


def local_client(endpoint: Any, db: Path, **fields: Any) -> StrongClient:
    spec = StrongSpec(name="strong", model="fake-gpt", max_retries=1, timeout_s=5, **fields)
    c = StrongClient.from_spec(spec, endpoint=endpoint, cache=RequestCache(db), ledger=Ledger(db))
    c.retry_base_s = 0.01
    return c


def test_local_servers_start_on_the_first_miss_and_never_for_a_cached_batch(servers, tmp_path):
    db = tmp_path / "c.sqlite"
    prompts = [f"question {i}" for i in range(6)]
    first = servers(1)
    warm = local_client(first, db).complete_many(prompts, stage="t")
    assert first.starts == 1 and not any(o.cached for o in warm)
    # a new run: new servers (new ports), same file identity -> the same keys, all cached
    pool = servers(2)
    c = local_client(pool, db, servers=2, concurrency=2)
    assert c.base_url is None and "not started" in repr(c) and pool.starts == 0
    again = c.complete_many(prompts, stage="t")
    assert [o.text for o in again] == [o.text for o in warm] and all(o.cached for o in again)
    assert c.complete(prompts[0], stage="t").cached
    assert pool.starts == 0 and pool.started == 0  # no server was started for cache hits
    # the first miss starts every server of the pool, once
    assert not c.complete("a new question", stage="t").cached
    assert pool.starts == 1 and pool.started == 2 and c.base_url in pool.base_urls
    assert sum(len(f.posts()) for f in pool.fakes) == 1
    assert c.build_request("x")["server"] == FakeServers.identity  # no port in the key


def test_requests_go_to_free_servers_one_at_a_time_each(servers, tmp_path):
    pool = servers(2)
    for f in pool.fakes:
        f.rule("slow", {"sleep": 0.15})
    c = local_client(pool, tmp_path / "c.sqlite", servers=2, concurrency=4)
    prompts = [f"slow {i}" for i in range(8)]
    out = c.complete_many(prompts, stage="t")
    assert [o.text for o in out] == [f"echo: {p}" for p in prompts]
    n = [len(f.posts()) for f in pool.fakes]
    assert sum(n) == 8 and min(n) >= 2  # both servers answered
    assert [f.max_in_flight for f in pool.fakes] == [1, 1]  # never two at once on one server
    # an API URL gets requests at once, up to `concurrency`
    with FakeOpenAI() as api:
        api.rule("slow", {"sleep": 0.15})
        local_client(api.base_url, tmp_path / "d.sqlite", concurrency=4).complete_many(
            prompts, stage="t")
        assert 2 <= api.max_in_flight <= 4


def test_servers_that_cannot_start_fail_every_call_without_a_second_start(servers, tmp_path):
    from cowest.server import LocalServerError

    pool = servers(2, fail=LocalServerError("the llama.cpp server exited with code 1"))
    c = local_client(pool, tmp_path / "c.sqlite", servers=2, concurrency=2)
    with pytest.raises(LocalServerError, match="exited with code 1"):
        c.complete_many([f"q{i}" for i in range(4)], stage="t")
    with pytest.raises(LocalServerError):
        c.complete("another", stage="t")
    assert pool.starts == 1
    assert c.ledger.totals()["requests"] == 0


def test_an_api_backend_takes_a_url_only(servers, tmp_path):
    spec = StrongSpec(name="gpt", model="gpt-x", backend="api", base_url="http://x/v1", free=True)
    with pytest.raises(TypeError, match="backend 'api' takes the API's base URL"):
        StrongClient.from_spec(spec, endpoint=servers(1), cache=RequestCache(tmp_path / "c"),
                               ledger=Ledger(tmp_path / "c"))


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
# malformed, null and blank replies
# ---------------------------------------------------------------------------------------


def test_malformed_and_null_replies_are_retried_then_returned_not_ok_never_cached(fake, tmp_path):
    fake.rule("NULL", {"content": None})
    fake.rule("NOCHOICE", {"choices": []})
    fake.rule("NOTJSON", {"body": b"<html>Bad gateway</html>"})
    fake.rule("HTMLTYPE", {"body": b"oops", "headers": {"Content-Type": "text/html"}})
    fake.rule("UNFINISHED", {"choices": [{"index": 0, "message": {"content": ""}}]})
    c = make(fake, tmp_path, concurrency=2, max_retries=2)
    prompts = ["ok 1", "NULL", "ok 2", "NOCHOICE", "NOTJSON", "HTMLTYPE", "UNFINISHED"]
    out = c.complete_many(prompts, stage="collab")
    assert [o.ok for o in out] == [True, False, True, False, False, False, False]
    assert all(o.text == "" and o.error and not o.blank for o in out if not o.ok)
    assert "None" in out[1].error and "no choices" in out[3].error and "not JSON" in out[4].error
    assert "empty" in out[6].error and "finish_reason None" in out[6].error  # blank, unfinished
    assert all("3 attempt(s)" in o.error for o in out if not o.ok)
    # each bad reply was asked 1 + max_retries times, each good one once
    assert len(fake.posts()) == 2 + 5 * 3
    s = c.ledger.summary("collab")[0]
    assert (s["calls"], s["errors"], s["requests"], s["failed_requests"]) == (7, 5, 17, 15)
    assert len(c.cache) == 2
    # a rerun sends exactly the failed requests again (each with its retries), none of the
    # answered ones
    n = len(fake.posts())
    c.complete_many(prompts, stage="collab")
    again = fake.posts()[n:]
    assert len(again) == 5 * 3
    assert not any("ok " in str(r["body"]["messages"]) for r in again)
    # once the server is healthy, the failed ones are answered and then cached
    fake.rules.clear()
    n = len(fake.posts())
    assert all(o.ok for o in c.complete_many(prompts, stage="collab"))
    assert len(fake.posts()) == n + 5 and len(c.cache) == 7


@pytest.mark.parametrize("max_retries", [2, 0])
def test_a_persistent_blank_reply_is_the_models_answer_asked_once_more_then_cached(
        fake, tmp_path, max_retries):
    """A deterministic model that stops at once (a blank, well-formed reply) must not leave
    its stage unfinishable: asked again min(1, max_retries) time(s), then an answer."""
    fake.rule("EMPTY", {"text": ""})
    fake.rule("BLANK", {"text": " \n\t "})
    c = make(fake, tmp_path, concurrency=2, max_retries=max_retries)
    prompts = ["ok 1", "EMPTY", "BLANK"]
    out = c.complete_many(prompts, stage="collab")
    tries = 1 + min(1, max_retries)
    assert [o.ok for o in out] == [True, False, False]  # no usable text...
    assert [o.error for o in out] == [None, None, None]  # ...but no failure either
    assert [o.blank for o in out] == [False, True, True]
    assert (out[1].text, out[2].text) == ("", " \n\t ") and out[1].finish_reason == "stop"
    assert [sum(w in p for p in fake.prompts()) for w in prompts] == [1, tries, tries]
    s = c.ledger.summary("collab")[0]
    assert (s["calls"], s["errors"], s["requests"], s["failed_requests"]) == (
        3, 0, 1 + 2 * tries, 2 * (tries - 1))
    blank_rows = [r for r in c.ledger.calls("collab") if r["error"] is not None]
    assert all("blank reply" in r["error"] and r["final"] == 0 for r in blank_rows)
    assert len(c.cache) == 3  # cached like any answer
    # a rerun sends nothing: the blank answers come from the cache, still blank
    n = len(fake.posts())
    again = make(fake, tmp_path, max_retries=max_retries).complete_many(prompts, stage="collab")
    assert len(fake.posts()) == n and all(o.cached for o in again)
    assert [(o.blank, o.error, o.text) for o in again] == [(o.blank, None, o.text) for o in out]
    replay = make(fake, tmp_path, cache_mode="replay")
    assert replay.complete("BLANK", stage="r").blank and len(fake.posts()) == n


def test_a_transient_blank_reply_then_text_is_a_normal_answer(fake, tmp_path):
    fake.rule("FLAKY", {"text": "  "}, times=1)
    c = make(fake, tmp_path, max_retries=2)
    out = c.complete("FLAKY", stage="t")
    assert out.ok and not out.blank and out.text == "echo: FLAKY" and len(fake.posts()) == 2
    rows = c.ledger.calls()
    assert [(r["attempt"], r["final"], r["error"] is None) for r in rows] == [
        (1, 0, False), (2, 1, True)]
    assert c.complete("FLAKY", stage="t").cached and len(fake.posts()) == 2


def test_a_blank_reply_after_a_failed_one_still_gets_its_one_retry(fake, tmp_path):
    fake.push({"body": b"<html>Bad gateway</html>"}, {"text": ""}, {"text": ""}, {"text": ""})
    c = make(fake, tmp_path, max_retries=3)
    out = c.complete("hi", stage="t")
    assert out.blank and out.error is None and len(fake.posts()) == 3  # bad, blank, blank
    # a blank on the last attempt is the answer (no attempt left to ask again)
    fake.script.clear()
    fake.push({"body": b"oops"}, {"text": " "})
    c2 = make(fake, tmp_path / "two", max_retries=1)
    assert c2.complete("hi", stage="t").blank and len(fake.posts()) == 5


def test_a_blank_answer_cached_by_an_earlier_version_is_asked_again(fake, tmp_path):
    c = make(fake, tmp_path)
    req = c.build_request("old")
    c.cache.put(req, {"text": " ", "prompt_tokens": 1, "completion_tokens": 0})  # no `blank`
    with pytest.raises(CacheMiss, match="unusable blank answer"):
        make(fake, tmp_path, cache_mode="replay").complete("old", stage="t")
    out = c.complete("old", stage="t")
    assert out.ok and out.text == "echo: old" and len(fake.posts()) == 1


def test_a_bad_reply_then_a_good_one_is_a_normal_answer(fake, tmp_path):
    fake.push({"body": b'{"choices": [{"message": {"content": "tru'}, {"text": "  "})
    c = make(fake, tmp_path, max_retries=2)
    out = c.complete("hi", stage="t")
    assert out.ok and out.text == "echo: hi" and len(fake.posts()) == 3
    rows = c.ledger.calls()
    assert [(r["attempt"], r["final"], r["error"] is None) for r in rows] == [
        (1, 0, False), (2, 0, False), (3, 1, True)]
    assert c.complete("hi", stage="t").cached and len(fake.posts()) == 3


def test_completion_ok_means_usable_text():
    assert Completion(text="Paris").ok
    assert not Completion(text=" \n ").ok
    assert not Completion(text="Paris", error="x").ok
    assert not Completion(text="").ok
    assert not Completion(text=" ", blank=True).ok  # the model's blank answer: not usable text
    assert Completion(text="").blank is False  # the default


def test_parse_reply_tells_a_blank_answer_from_an_unusable_reply():
    from cowest.replies import parse_reply

    req = {"endpoint": "completion", "prompt": "Q", "logprobs": False}

    def parse(choice):
        return parse_reply(json.dumps({"choices": [choice]}).encode(), req, 0.1, str)[0]

    for finish in ("stop", "length"):
        blank = parse({"text": "\n", "finish_reason": finish})
        assert blank.blank and blank.error is None and blank.text == "\n" and not blank.ok
    assert parse({"text": None, "finish_reason": "stop"}).error  # null content: a failure
    assert parse({"text": " ", "finish_reason": None}).error  # unfinished blank: a failure
    text = parse({"text": "Paris", "finish_reason": "stop"})
    assert text.ok and not text.blank


# ---------------------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------------------


def test_budget_cap_raises_before_any_request(fake, tmp_path):
    c = make(fake, tmp_path, budget=0.01, price_in_per_mtok=10.0, price_out_per_mtok=30.0,
             max_tokens=100)
    # worst case: (4000 bytes + 4 ("user") + 16 + 64) in * 10/1M + 100 out * 30/1M > 0.01
    assert c.worst_case_cost(c.build_request("x" * 4000)) == pytest.approx(
        (4084 * 10 + 100 * 30) / 1e6)
    with pytest.raises(BudgetExceeded, match="Nothing was sent"):
        c.complete("x" * 4000, stage="t")
    assert fake.posts() == []
    # a small call fits; the spent money then counts against the next one
    ok = c.complete("short", stage="t")  # 11 * 10 + 7 * 30 = 320e-6 (reported usage)
    assert ok.ok and c.ledger.spent() == pytest.approx(320e-6)
    c2 = make(fake, tmp_path, budget=0.0045, price_in_per_mtok=10.0, price_out_per_mtok=30.0,
              max_tokens=100)
    with pytest.raises(BudgetExceeded) as ei:
        c2.complete("y" * 40, stage="t")  # 0.00032 + 128e-5 + 3e-3 = 0.0046 > 0.0045
    assert "$0.0003 spent" in str(ei.value)
    assert len(fake.posts()) == 1
    # a cached answer needs no budget
    assert c2.complete("short", stage="t").cached


def test_an_api_model_without_prices_is_refused_unless_free(fake, tmp_path):
    spec = dict(name="llama3-70b", model="meta-llama/Meta-Llama-3-70B-Instruct", backend="api",
                base_url="http://user:pw@localhost:8000/v1", api_key_env="VLLM_API_KEY")
    with pytest.raises(UnpricedModelError) as ei:
        _from_spec(StrongSpec(**spec), tmp_path, endpoint=spec["base_url"])
    msg = str(ei.value)
    for part in ("strong_models.llama3-70b", "price_in_per_mtok", "price_out_per_mtok",
                 "free: true", "http://localhost:8000/v1"):
        assert part in msg, (part, msg)
    assert "pw" not in msg and isinstance(ei.value, ValueError)
    assert _from_spec(StrongSpec(**spec, free=True), tmp_path, endpoint=spec["base_url"]).free
    assert _from_spec(StrongSpec(**spec, price_out_per_mtok=0.5), tmp_path,
                      endpoint=spec["base_url"]).price_out == 0.5
    # a local server is free without saying so
    local = _from_spec(StrongSpec(name="q", model="qwen2.5-coder-0.5b"), tmp_path,
                       endpoint="http://127.0.0.1:1/v1")
    assert local.free and local.price_in == local.price_out == 0


def test_every_attempt_sent_is_charged_worst_case_unless_usage_was_reported(fake, tmp_path):
    """One logical call of 3 attempts is 3 paid requests in the ledger."""
    fake.push({"sleep": 0.5}, {"status": 500}, {"usage": None})  # timeout, 5xx, no usage
    c = make(fake, tmp_path, budget=1.0, price_in_per_mtok=10.0, price_out_per_mtok=30.0,
             max_tokens=50, timeout_s=0.2, max_retries=3)
    worst = c.worst_case_cost(c.build_request("hi"))
    assert c.complete("hi", stage="t").ok and len(fake.posts()) == 3
    rows = c.ledger.calls()
    assert [r["cost_usd"] for r in rows] == pytest.approx([worst] * 3)
    assert [(r["attempt"], r["final"]) for r in rows] == [(1, 0), (2, 0), (3, 1)]
    # a 429 and a 400 are refusals (not billed); reported usage is charged as reported
    fake.push({"status": 429, "headers": {"Retry-After": "0"}})
    c.complete("again", stage="u")  # 429, then the default reply with usage 11 / 7
    fake.push({"status": 400})
    with pytest.raises(StrongModelError, match="not retried"):
        c.complete("bad", stage="v")
    assert [r["cost_usd"] for r in c.ledger.calls("u")] == pytest.approx([0, 320e-6])
    assert [r["cost_usd"] for r in c.ledger.calls("v")] == [0]
    assert c.ledger.spent() == pytest.approx(3 * worst + 320e-6)
    s = c.ledger.summary("t")[0]
    assert (s["calls"], s["requests"], s["failed_requests"], s["errors"]) == (1, 3, 2, 0)


def test_identical_requests_of_a_batch_are_sent_once(fake, tmp_path):
    c = make(fake, tmp_path, concurrency=3)
    prompts = ["a", "b", "a", "c", "a", "b"]
    out = c.complete_many(prompts, stage="t")
    assert [o.text for o in out] == [f"echo: {p}" for p in prompts]
    assert sorted(fake.prompts()) == ["a", "b", "c"]
    assert len({id(o) for o in out}) == 6  # each position its own copy
    s = c.ledger.summary("t")[0]
    assert (s["calls"], s["requests"]) == (3, 3)
    # different sample indices are different requests; cached duplicates count once too
    out = c.complete_many(["a", "a", "a"], stage="u", sample_indices=[0, 1, 0])
    assert len(fake.posts()) == 4 and out[0].cached and not out[1].cached
    assert c.ledger.summary("u")[0]["calls"] == 2


def test_complete_many_stops_on_budget(fake, tmp_path):
    c = make(fake, tmp_path, budget=0.003, price_in_per_mtok=10.0, price_out_per_mtok=30.0,
             max_tokens=10)
    with pytest.raises(BudgetExceeded):
        c.complete_many([f"p{i}" for i in range(20)], stage="t")
    # worst case of each call: (2 + 4 + 80) * 10/1M + 10 * 30/1M = 0.00116; each costs
    # 0.00032 once answered: the 7th call would pass the cap (6 * 0.00032 + 0.00116 > 0.003)
    assert len(fake.posts()) == 6
    assert c.ledger.spent() == pytest.approx(6 * 320e-6) and c.ledger.spent() <= 0.003


# ---------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------


def _files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"], ids=["bare", "LF", "CRLF"])
def test_api_key_never_leaks(fake, tmp_path, monkeypatch, ending):
    """A key read from a file (ending in a newline) is stripped, used, and written nowhere:
    not in errors, tracebacks, completions, the ledger, the cache file, exports or logs,
    although the server echoes the Authorization header in every form it can."""
    monkeypatch.setenv(KEY_ENV, SECRET + ending)
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # the SDK's and httpx's debug logs included
    fake.rule("UNAUTH", {"status": 401, "echo_auth": True})
    fake.rule("BROKEN", {"status": 503, "echo_auth": True})
    fake.rule("GARBLED", {"body_echo_auth": True})  # a 200 proxy page, not JSON
    fake.rule("EMPTY", {"text": ""})
    try:
        c = make(fake, tmp_path, backend="api", api_key_env=KEY_ENV, max_retries=1,
                 price_in_per_mtok=1.0, price_out_per_mtok=2.0)
        assert c.complete("hello", stage="t", logprobs=True, top_logprobs=2).ok
        outs = c.complete_many(["a", "EMPTY", "GARBLED", "b"], stage="t")
        errors = []
        for prompt in ("UNAUTH", "BROKEN"):
            with pytest.raises(StrongModelError) as ei:
                c.complete(prompt, stage="t")
            errors.append(ei.value)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
    # the key was really used, stripped of its line ending...
    assert all(r["headers"].get("authorization") == f"Bearer {SECRET}" for r in fake.posts())
    # ...and every message that quoted it shows *** instead
    assert "invalid credentials Bearer ***" in str(errors[0]) and "***" in str(errors[1])
    assert [o.ok for o in outs] == [True, False, False, True] and "***" in outs[2].error
    c.cache.export_jsonl(tmp_path / "ship" / "cache.jsonl")
    c.cache.export_jsonl(tmp_path / "ship" / "cache.jsonl.gz")
    # what a run writes down: a manifest with the errors and tracebacks, the rendered cells
    (tmp_path / "manifest.json").write_text(json.dumps({
        "errors": [str(e) for e in errors], "reprs": [repr(e) for e in errors],
        "tracebacks": ["".join(traceback.format_exception(e)) for e in errors],
        "completions": [o.error for o in outs], "client": [repr(c), str(vars(c))],
        "ledger": c.ledger.calls(), "summary": c.ledger.summary()}))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"strong.sqlite", "cache.jsonl", "cache.jsonl.gz", "run.log", "manifest.json"} <= {
        p.name for p in files}
    assert log_file.stat().st_size > 0  # the SDK did log
    assert _files_holding(tmp_path, SECRET) == []
    print(f"scanned {len(files)} files:", sorted(p.name for p in files))
    for row in c.ledger.calls():
        assert SECRET not in str(row)


def test_every_written_form_of_a_key_is_scrubbed(fake):
    """httpx's own error for a header with a line ending (as the key would be sent
    unstripped), and the escaped, bytes, URL- and JSON-encoded forms of any key."""
    import httpx

    for raw in (SECRET + "\n", SECRET + "\r\n", "sk-p+l/u=s\n"):
        with pytest.raises(httpx.LocalProtocolError) as ei:
            httpx.post(fake.base_url + "/chat/completions",
                       headers={"Authorization": f"Bearer {raw}"})
        core = raw.strip()
        written = [str(ei.value), repr(ei.value), repr(raw), repr(raw.encode()),
                   json.dumps(raw), quote(raw), quote(raw, safe=""), quote_plus(raw),
                   raw.encode("unicode_escape").decode(), f"Bearer {raw}"]
        assert repr(raw.encode())[2:-1] in str(ei.value)  # b'Bearer sk-...\\n', escaped
        for text in written:
            for secret in (raw, core):  # the environment's value, or the key used
                clean = scrub_secret(text, secret)
                assert core not in clean and "***" in clean, (text, clean)
                assert quote(core, safe="") not in clean and quote_plus(core) not in clean
    assert fake.posts() == []  # httpx refused to send any of them


def test_a_key_that_cannot_be_sent_is_scrubbed_from_the_transport_error(fake, tmp_path,
                                                                        monkeypatch):
    """A key with a line break inside (not stripped) makes httpx fail before sending:
    the error (Completion, exception, ledger) holds no part of it, nothing is retried
    or charged."""
    monkeypatch.setenv(KEY_ENV, "sk-inner\nSECRET456")
    c = make(fake, tmp_path, backend="api", api_key_env=KEY_ENV, max_retries=3,
             price_in_per_mtok=1.0, price_out_per_mtok=2.0)
    with pytest.raises(StrongModelError) as ei:
        c.complete("hi", stage="t")
    msg = str(ei.value)
    assert "not retried" in msg and "LocalProtocolError" in msg and "***" in msg
    assert "SECRET456" not in msg and "sk-inner" not in msg
    assert fake.posts() == []
    (row,) = c.ledger.calls()
    assert row["cost_usd"] == 0 and "SECRET456" not in row["error"]
    assert _files_holding(tmp_path, "SECRET456") == []


def test_missing_key_is_a_clear_error_but_replay_needs_none(fake, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    c = make(fake, tmp_path, backend="api", api_key_env=KEY_ENV)
    with pytest.raises(StrongModelError, match=f"{KEY_ENV}.*not set"):
        c.complete("hi", stage="t")
    assert fake.posts() == []
    monkeypatch.setenv(KEY_ENV, SECRET)
    make(fake, tmp_path, backend="api", api_key_env=KEY_ENV).complete("hi", stage="t")
    monkeypatch.delenv(KEY_ENV)
    n = len(fake.posts())
    replay = make(fake, tmp_path, backend="api", api_key_env=KEY_ENV, cache_mode="replay")
    assert replay.complete("hi", stage="t").cached
    with pytest.raises(CacheMiss, match="fake-gpt"):
        replay.complete("something new", stage="t")
    assert len(fake.posts()) == n  # replay sends nothing
    # the endpoint is part of the key: another API's answer is not this one's
    elsewhere = make(dead_url(), tmp_path, backend="api", api_key_env=KEY_ENV,
                     cache_mode="replay")
    with pytest.raises(CacheMiss):
        elsewhere.complete("hi", stage="t")


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
    assert parse_logprobs(None) == (None, None)


def test_retry_after_parsing():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


# ---------------------------------------------------------------------------------------
# objects built from the profile: every StrongSpec field reaches what it configures
# ---------------------------------------------------------------------------------------


def spec_fields() -> dict[str, Any]:
    """StrongSpec's fields, whether config.py uses pydantic or dataclasses."""
    return (getattr(StrongSpec, "model_fields", None)
            or {f.name: f for f in dataclasses.fields(StrongSpec)})


#: A value for every StrongSpec field that is not its default (and unlike the others, so
#: swapped wiring shows). A field added to StrongSpec fails the tests below until it is here.
NON_DEFAULT: dict[str, Any] = {
    "name": "judge",
    "model": "smollm2-135m",  # an offline asset, for LocalServer.from_spec
    "backend": "api",
    "base_url": "http://example.invalid/v1",
    "api_key_env": "COWEST_TEST_FIELD_KEY",
    "mode": "completion",
    "max_tokens": 77,
    "answer_tokens": 8,
    "temperature": 0.3,
    "top_p": 0.9,
    "system_prompt": "Be brief.",
    "extra_body": {"top_k": 5},
    "n_threads": 3,
    "servers": 2,
    "n_ctx": 1024,
    "concurrency": 3,
    "timeout_s": 33.0,
    "max_retries": 7,
    "price_in_per_mtok": 1.25,
    "price_out_per_mtok": 2.5,
    "free": True,
    "stands_in_for": "gpt-4-0613",
}
#: spec field -> the StrongClient attribute (and constructor argument) that holds it
CLIENT_ATTR = {
    "name": "name", "model": "model", "mode": "mode", "max_tokens": "max_tokens",
    "temperature": "temperature", "top_p": "top_p", "system_prompt": "system_prompt",
    "extra_body": "extra_body", "timeout_s": "timeout_s", "max_retries": "max_retries",
    "concurrency": "concurrency", "price_in_per_mtok": "price_in",
    "price_out_per_mtok": "price_out", "free": "free",  # free: True for every local client
    "api_key_env": "api_key_env",  # backend "api" only
}
#: spec field -> the llama_cpp.server argument LocalServer.from_spec sets from it
SERVER_ARG = {"model": "--model_alias", "n_threads": "--n_threads", "n_ctx": "--n_ctx"}
#: spec field -> the ServerPool attribute ServerPool.from_spec sets from it
POOL_ATTR = {"servers": "size"}
#: fields that configure neither object as a value of its own, and who consumes them
ELSEWHERE = {
    "backend": "chooses the objects: the pipeline starts a LocalServer only for 'local'; "
               "StrongClient.from_spec then adds the server's request_defaults and no key "
               "(both checked below)",
    "base_url": "the API root of backend 'api': the caller passes it as "
                "StrongClient.from_spec(endpoint=...) (a local backend passes its "
                "ServerPool instead)",
    "answer_tokens": "the answer pass of cowest.collaborate.Collaborator, which Pipeline.collaborator "
                     "builds with it (tests/test_pipeline.py checks that; tests/test_collaborate.py runs the pass)",
    "stands_in_for": "a label only: the paper's model a substitute replaces, shown by notebooks 05 and 07; "
                     "it changes no request (left out of the stage keys by Pipeline.strong_inputs)",
}


def _from_spec(spec: StrongSpec, tmp_path: Path, endpoint: Any) -> StrongClient:
    db = tmp_path / "spec.sqlite"
    return StrongClient.from_spec(spec, endpoint=endpoint, cache=RequestCache(db),
                                  ledger=Ledger(db))


def test_every_strong_spec_field_reaches_the_object_it_configures(tmp_path, monkeypatch):
    fields = set(spec_fields())
    wired = set(CLIENT_ATTR) | set(SERVER_ARG) | set(POOL_ATTR) | set(ELSEWHERE)
    assert fields <= set(NON_DEFAULT), (
        f"StrongSpec field(s) {sorted(fields - set(NON_DEFAULT))} are new: pass them in "
        "StrongClient.from_spec, LocalServer.from_spec or ServerPool.from_spec, then add "
        "them to this test")
    assert fields <= wired, f"not wired anywhere: {sorted(fields - wired)}"
    assert set(NON_DEFAULT) <= fields and wired <= fields, "stale entries in this test"
    defaults = StrongSpec(name="x", model="y")
    for f, value in NON_DEFAULT.items():
        if f not in ("name", "model"):
            assert getattr(defaults, f) != value, f"{f}: pick a non-default value"

    # the client, backend "api": every client field as given
    api = StrongSpec(**NON_DEFAULT)
    client = _from_spec(api, tmp_path, endpoint=api.base_url)
    for f, attr in CLIENT_ATTR.items():
        assert getattr(client, attr) == NON_DEFAULT[f], f
    assert client.base_url == api.base_url

    # the server, backend "local" (not started): model file, alias, threads, context...
    local = StrongSpec(**{**NON_DEFAULT, "backend": "local", "base_url": None})
    monkeypatch.setattr(assets, "gguf_path", lambda name: tmp_path / f"{name}.gguf")
    server = LocalServer.from_spec(local, logits_all=True, log_path=tmp_path / "srv.log")
    assert server.proc is None and not server.running and server.port is None
    cmd = server.command()
    for f, flag in SERVER_ARG.items():
        assert cmd[cmd.index(flag) + 1] == str(NON_DEFAULT[f]), f
    assert cmd[cmd.index("--model") + 1] == str(tmp_path / "smollm2-135m.gguf")
    assert cmd[cmd.index("--chat_format") + 1] == assets.get_asset("smollm2-135m").chat_format
    assert cmd[cmd.index("--logits_all") + 1] == "True"
    assert server.log_path == tmp_path / "srv.log"
    off = LocalServer.from_spec(local, logits_all=False, log_path=tmp_path / "srv.log")
    assert off.command()[off.command().index("--logits_all") + 1] == "False"

    # the pool (not started): `servers` servers, each as LocalServer.from_spec builds it
    pool = ServerPool.from_spec(local, logits_all=True, log_path=tmp_path / "srv.log")
    for f, attr in POOL_ATTR.items():
        assert getattr(pool, attr) == NON_DEFAULT[f], f
    assert pool.started == 0 and [s.log_path.name for s in pool.servers] == ["srv-1.log",
                                                                           "srv-2.log"]
    for s in pool.servers:
        assert s.command() == server.command() and s.port is None
    assert pool.identity == server.identity == f"local:{assets.get_asset('smollm2-135m').sha256}"
    one = ServerPool.from_spec(StrongSpec(**{**vars_of(local), "servers": 1}), logits_all=False,
                               log_path=tmp_path / "srv.log")
    assert [s.log_path for s in one.servers] == [tmp_path / "srv.log"]

    # the client of that server: the alias as model, the server's defaults, no key
    lc = _from_spec(local, tmp_path, endpoint=server.base_url)
    assert lc.model == server.alias and lc.api_key_env is None
    assert lc.extra_body == {**LLAMA_CPP_PLAIN_SAMPLING, **NON_DEFAULT["extra_body"]}
    for f, attr in CLIENT_ATTR.items():
        if f not in ("extra_body", "api_key_env"):
            assert getattr(lc, attr) == NON_DEFAULT[f], f
    with pytest.raises(ValueError, match="backend 'api'"):
        LocalServer.from_spec(api, logits_all=False, log_path=tmp_path / "x.log")


def test_no_constructor_restates_a_spec_default():
    """Defaults live in StrongSpec only: the constructors require what the spec sets."""
    empty = inspect.Parameter.empty
    client = inspect.signature(StrongClient.__init__).parameters
    for attr in CLIENT_ATTR.values():
        assert client[attr].default is empty, attr
    for p in ("endpoint", "cache", "ledger"):
        assert client[p].default is empty, p
    server = inspect.signature(LocalServer.__init__).parameters
    for p in ("alias", "n_threads", "n_ctx", "logits_all"):
        assert server[p].default is empty, p
    assert inspect.signature(LocalServer.from_spec).parameters["logits_all"].default is empty
    assert inspect.signature(ServerPool.from_spec).parameters["logits_all"].default is empty


def test_requests_carry_top_p_system_prompt_and_extra_body_of_the_spec(fake, tmp_path):
    # local backend: the spec's extra_body is added to (and overrides) the server's defaults
    c = make(fake, tmp_path, top_p=0.5, system_prompt="Answer in French.",
             extra_body={"top_k": 3, "repeat_penalty": 1.3})
    assert c.complete("Hi?", stage="t").ok
    body = fake.posts()[-1]["body"]
    assert body["top_p"] == 0.5
    assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert body["top_k"] == 3 and body["repeat_penalty"] == 1.3
    # completion mode: the system prompt is text before the prompt
    c = make(fake, tmp_path, mode="completion", system_prompt="Answer in French.")
    assert c.complete("Q: Hi?\nA:", stage="t").ok
    body = fake.posts()[-1]["body"]
    assert body["prompt"] == "Answer in French.\n\nQ: Hi?\nA:"
    assert body["top_p"] == 1.0 and body["repeat_penalty"] == 1.0
    # api backend: only the spec's extra_body, whatever the host
    c = make(fake, tmp_path, backend="api", extra_body={"user": "cowest"}, top_p=0.7)
    assert c.complete("Hey", stage="t").ok
    body = fake.posts()[-1]["body"]
    assert body["user"] == "cowest" and body["top_p"] == 0.7 and "repeat_penalty" not in body
    # each is part of the cache key: a different value asks again
    n = len(fake.posts())
    make(fake, tmp_path, backend="api", extra_body={"user": "other"}, top_p=0.7).complete(
        "Hey", stage="t")
    make(fake, tmp_path, backend="api", extra_body={"user": "cowest"}, top_p=0.7).complete(
        "Hey", stage="t")
    assert len(fake.posts()) == n + 1


def test_cache_keys_of_default_profiles_are_those_of_the_pre_split_client(tmp_path):
    """The local keys below were computed with cowest/strong.py as the pipeline built it
    before `from_spec` existed: answers cached by earlier runs are still found (a local
    asset's endpoint identity is implied by its name, so it is left out of the key). The
    API key changed when the endpoint identity (the normalised base URL) entered it; it
    was 6a545ecca61bbf72422ed926a8ceabce5bcd917fba0111a628cfcacf525b10e7."""
    local = StrongSpec(name="qwen2.5-coder-0.5b", model="qwen2.5-coder-0.5b", max_tokens=64)
    chat = _from_spec(local, tmp_path, endpoint="http://127.0.0.1:41234/v1")
    comp = _from_spec(StrongSpec(**{**vars_of(local), "mode": "completion"}), tmp_path,
                      endpoint="http://127.0.0.1:41234/v1")
    api = StrongSpec(name="gpt-4", model="gpt-4-0613", backend="api",
                     base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY",
                     max_tokens=384, concurrency=8, price_in_per_mtok=30.0,
                     price_out_per_mtok=60.0)
    gpt4 = _from_spec(api, tmp_path, endpoint=api.base_url)
    keys = [
        request_key(chat.build_request("What is 2+2?")),
        request_key(chat.build_request("What is 2+2?", temperature=0.8, sample_index=2)),
        request_key(comp.build_request("Q: 1+1?\nA:", stop="\n", logprobs=True, top_logprobs=2)),
        request_key(gpt4.build_request("What is 2+2?")),
    ]
    assert keys == [
        "8956f2ba58d8d034f10f3ce38fea38b760ba05905f5c1dd15f30433af44583fc",
        "1344792c71331e2fb91b546a3c21a5d73c9598ecade9b204a2b31c1cf3b12e5f",
        "76625a743f10b483a50ceb001f020412efb4be306db1b76667414bbf600e3812",
        "9f86e5441c1d08e3339dc3e86d8071b6b58b93edca430a7474a389500ac637b0",
    ]
    assert "server" not in chat.build_request("x") and "server" not in comp.build_request("x")
    assert gpt4.build_request("x")["server"] == "https://api.openai.com/v1"
    # the same local model through its started server: the same keys, whatever the port
    server = LocalServer.from_spec(local, logits_all=False, log_path=tmp_path / "s.log")
    server.port = 40000
    via_server = StrongClient.from_spec(local, endpoint=server, cache=chat.cache,
                                        ledger=chat.ledger)
    assert request_key(via_server.build_request("What is 2+2?")) == keys[0]


def test_the_endpoint_identity_keeps_two_servers_apart(tmp_path):
    """Two different APIs serving the same model name, or two GGUF files behind the same
    local alias, never share an answer; spellings of one URL do."""
    assert endpoint_identity("HTTPS://user:pw@API.OpenAI.com:443/v1/") == \
        "https://api.openai.com/v1"
    assert endpoint_identity("http://localhost:80/v1") == "http://localhost/v1"
    assert endpoint_identity("http://localhost:8000/v1/?x=1#f") == "http://localhost:8000/v1"
    with FakeOpenAI() as one, FakeOpenAI() as two:
        a = make(one, tmp_path, backend="api")
        b = make(two, tmp_path, backend="api")
        assert a.complete("same question", stage="t").ok
        assert not b.complete("same question", stage="t").cached
        assert len(one.posts()) == len(two.posts()) == 1
        assert make(one.base_url + "/", tmp_path, backend="api").complete(  # same endpoint
            "same question", stage="t").cached
    # local: the identity is the GGUF's sha256 (not the port); a file other than the
    # asset's pinned one behind the same alias gets its own keys
    spec = StrongSpec(name="q", model="qwen2.5-coder-0.5b")
    pinned = _from_spec(spec, tmp_path, endpoint="http://127.0.0.1:1/v1")
    other = LocalServer(tmp_path / "other.gguf", alias="qwen2.5-coder-0.5b", n_threads=1,
                        n_ctx=256, logits_all=False, sha256="0" * 64)
    c = StrongClient.from_spec(spec, endpoint=other, cache=pinned.cache,
                               ledger=pinned.ledger)
    assert c.build_request("x")["server"] == "local:" + "0" * 64
    assert request_key(c.build_request("x")) != request_key(pinned.build_request("x"))


def vars_of(spec: StrongSpec) -> dict[str, Any]:
    """The fields of a spec as a dict (pydantic or dataclass)."""
    return {f: getattr(spec, f) for f in spec_fields()}
