"""Fault injection: the strong-model client and the local server against a fake
OpenAI-compatible server on loopback (tests/fakeserver.py).

For each fault: how many requests reached the server, what the ledger and the cache
recorded, and what a rerun sends (the failed requests again, the answered ones never).
Retries use tiny backoffs and timeouts of a fraction of a second: the file runs in
seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cowest.cache import RequestCache
from cowest.client import StrongClient, StrongModelError
from cowest.ledger import BudgetExceeded, Ledger
from cowest.server import LocalServer, LocalServerError, ServerPool

try:  # tests/ as a package, or tests/ itself on sys.path (pytest's default "prepend")
    from tests.fakeserver import FakeOpenAI, process_gone
except ImportError:  # pragma: no cover
    from fakeserver import FakeOpenAI, process_gone  # type: ignore[no-redef]

FAKESERVER = Path(__file__).resolve().with_name("fakeserver.py")
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 0.25  # per attempt
MAX_RETRIES = 2  # 3 attempts
PRICE_IN, PRICE_OUT = 10.0, 30.0  # USD per 1M tokens
USAGE_COST = (11 * PRICE_IN + 7 * PRICE_OUT) / 1e6  # the fake reports 11 + 7 tokens

#: fault -> (action of the fake, how the failed attempt is charged)
#: "worst": sent, no usage reported -> worst case; "usage": as reported; "none": not billed
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "http429-retry-after": ({"status": 429, "headers": {"Retry-After": "0.1"}}, "none"),
    "http500": ({"status": 500}, "worst"),
    "http503": ({"status": 503, "headers": {"Retry-After": "0.05"}}, "worst"),
    "timeout": ({"sleep": 0.6}, "worst"),
    "connection-reset": ({"reset": True}, "worst"),
    "connection-closed": ({"close": True}, "worst"),
    "malformed-json": ({"body": b"{\"choices\": [oops"}, "worst"),
    "html-page": ({"body": b"<html>502 Bad Gateway</html>",
                   "headers": {"Content-Type": "text/html"}}, "worst"),
    "empty-content": ({"text": ""}, "usage"),
    "null-content": ({"content": None}, "usage"),
    "blank-text": ({"text": " \n\t "}, "usage"),
    "blank-unfinished": ({"choices": [{"index": 0, "message": {"content": ""},
                                       "finish_reason": None}]}, "usage"),
    "no-choices": ({"choices": []}, "usage"),
    "truncated-response": ({"truncate": True}, "worst"),
    "truncated-json": ({"body": b'{"id": "x", "choices": [{"message": {"content": "Par'},
                       "worst"),
}
#: faults that are a reply (the server answered, unusably): the call returns not-ok
REPLY_FAULTS = {"malformed-json", "html-page", "null-content", "blank-unfinished",
                "no-choices", "truncated-json"}
#: well-formed blank replies: a failure once (asked again), the model's answer if repeated
BLANK_FAULTS = {"empty-content", "blank-text"}
#: faults that stay failures however often they come
FAILURES = [n for n in FAULTS if n not in BLANK_FAULTS]


@pytest.fixture
def fake():
    with FakeOpenAI() as f:
        yield f


def client(url: str, db: Path, *, concurrency: int = 1, budget: float | None = None,
           max_retries: int = MAX_RETRIES) -> StrongClient:
    """A client of an API-like endpoint with prices, tiny backoffs and a short timeout."""
    return StrongClient(
        "strong", "fake-gpt", endpoint=url, cache=RequestCache(db),
        ledger=Ledger(db, budget_usd=budget), api_key_env=None, mode="chat", max_tokens=20,
        temperature=0.0, top_p=1.0, timeout_s=TIMEOUT_S, max_retries=max_retries,
        concurrency=concurrency, price_in=PRICE_IN, price_out=PRICE_OUT, free=False,
        system_prompt=None, extra_body={}, retry_base_s=0.005, retry_max_s=0.02,
        retry_after_max_s=1.0)


def sent(fake: FakeOpenAI, word: str) -> int:
    """Requests the fake received whose prompt contains `word`."""
    return sum(word in p for p in fake.prompts())


def charge(kind: str, c: StrongClient, prompt: str) -> float:
    return {"worst": c.worst_case_cost(c.build_request(prompt)), "usage": USAGE_COST,
            "none": 0.0}[kind]


# ---------------------------------------------------------------------------------------
# one transient fault: survived by a retry, paid for, never repeated
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_transient_fault_is_retried_recorded_and_never_resent(fake, tmp_path, name):
    action, kind = FAULTS[name]
    fake.rule("TARGET", action, times=1)
    db = tmp_path / "cache.sqlite"
    c = client(fake.base_url, db)
    prompts = ["good A", "TARGET question", "good B"]
    out = c.complete_many(prompts, stage="f")
    assert [o.ok for o in out] == [True, True, True]
    assert out[1].text == "echo: TARGET question"
    # requests received: each good one once, the faulty one twice
    assert (sent(fake, "good A"), sent(fake, "TARGET"), sent(fake, "good B")) == (1, 2, 1)
    if name == "http429-retry-after":
        t = [r["t"] for r in fake.posts() if "TARGET" in str(r["body"])]
        assert t[1] - t[0] >= 0.1  # Retry-After honoured
    # ledger: one row per request; the failed attempt charged by the rule of its kind
    rows = c.ledger.calls("f")
    target = [r for r in rows if r["error"] is not None or r["attempt"] == 2]
    assert len(rows) == 4 and len(target) == 2
    first, second = target
    assert (first["attempt"], first["final"], second["attempt"], second["final"]) == (1, 0, 2, 1)
    assert first["cost_usd"] == pytest.approx(charge(kind, c, "TARGET question"))
    assert second["cost_usd"] == pytest.approx(USAGE_COST) and second["error"] is None
    s = c.ledger.summary("f")[0]
    assert (s["calls"], s["requests"], s["failed_requests"], s["errors"]) == (3, 4, 1, 0)
    # cache: the three answers, no failure
    assert len(c.cache) == 3
    # a rerun (a new process) sends nothing
    n = len(fake.posts())
    again = client(fake.base_url, db).complete_many(prompts, stage="f")
    assert all(o.cached for o in again) and len(fake.posts()) == n


# ---------------------------------------------------------------------------------------
# one persistent fault: given up after the retries; a rerun sends only the failed request
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAILURES)
def test_a_persistent_fault_fails_cleanly_and_a_rerun_resends_only_it(fake, tmp_path, name):
    action, kind = FAULTS[name]
    fake.rule("TARGET", action)
    db = tmp_path / "cache.sqlite"
    c = client(fake.base_url, db)
    prompts = ["good A", "TARGET question"]
    attempts = MAX_RETRIES + 1
    if name in REPLY_FAULTS:  # an unusable reply: returned, not ok, not cached
        out = c.complete_many(prompts, stage="f")
        assert out[0].ok and not out[1].ok and out[1].text == "" and out[1].error
        assert f"{attempts} attempt(s)" in out[1].error
    else:  # the server could not answer: a clear exception
        with pytest.raises(StrongModelError, match=f"gave up after {attempts} attempt"):
            c.complete_many(prompts, stage="f")
    assert (sent(fake, "good A"), sent(fake, "TARGET")) == (1, attempts)
    rows = [r for r in c.ledger.calls("f") if r["error"] is not None]
    assert [(r["attempt"], r["final"]) for r in rows] == [(1, 0), (2, 0), (3, 1)]
    expected = charge(kind, c, "TARGET question")
    assert [r["cost_usd"] for r in rows] == pytest.approx([expected] * attempts)
    s = c.ledger.summary("f")[0]
    assert (s["calls"], s["requests"], s["failed_requests"], s["errors"]) == (
        2, 1 + attempts, attempts, 1)
    assert len(c.cache) == 1  # only the answer
    # rerun against the still broken server: the failed request again (with its retries)
    if name in REPLY_FAULTS:
        assert not client(fake.base_url, db).complete_many(prompts, stage="g")[1].ok
    else:
        with pytest.raises(StrongModelError):
            client(fake.base_url, db).complete_many(prompts, stage="g")
    assert (sent(fake, "good A"), sent(fake, "TARGET")) == (1, 2 * attempts)
    # rerun against the healed server: the failed request once, the answered one never
    fake.rules.clear()
    out = client(fake.base_url, db).complete_many(prompts, stage="h")
    assert [o.ok for o in out] == [True, True] and out[0].cached and not out[1].cached
    assert (sent(fake, "good A"), sent(fake, "TARGET")) == (1, 2 * attempts + 1)
    assert len(c.cache) == 2


# ---------------------------------------------------------------------------------------
# a persistent well-formed blank reply: the model's answer after one retry, cached
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BLANK_FAULTS))
def test_a_persistent_blank_reply_is_an_answer_after_one_retry_and_never_resent(
        fake, tmp_path, name):
    action, kind = FAULTS[name]
    fake.rule("TARGET", action)
    db = tmp_path / "cache.sqlite"
    c = client(fake.base_url, db)
    prompts = ["good A", "TARGET question"]
    out = c.complete_many(prompts, stage="f")
    assert out[0].ok and not out[1].ok  # no usable text...
    assert out[1].error is None and out[1].blank and out[1].text == action["text"]  # ...an answer
    assert (sent(fake, "good A"), sent(fake, "TARGET")) == (1, 2)  # min(1, max_retries) retry
    rows = [r for r in c.ledger.calls("f") if r["attempt"] > 1 or r["error"] is not None]
    assert [(r["attempt"], r["final"], r["error"] is None) for r in rows] == [
        (1, 0, False), (2, 1, True)]
    assert "blank reply" in rows[0]["error"]
    assert [r["cost_usd"] for r in rows] == pytest.approx([charge(kind, c, "TARGET")] * 2)
    s = c.ledger.summary("f")[0]
    assert (s["calls"], s["requests"], s["failed_requests"], s["errors"]) == (2, 3, 1, 0)
    assert len(c.cache) == 2  # cached like any answer
    # a rerun sends nothing, whether the server still answers blank or not
    for healed in (False, True):
        if healed:
            fake.rules.clear()
        again = client(fake.base_url, db).complete_many(prompts, stage="g")
        assert all(o.cached for o in again) and again[1].blank and again[1].error is None
        assert (sent(fake, "good A"), sent(fake, "TARGET")) == (1, 2)


def test_null_content_is_no_blank_answer_and_a_rerun_resends_it(fake, tmp_path):
    fake.rule("TARGET", {"content": None})
    db = tmp_path / "cache.sqlite"
    out = client(fake.base_url, db).complete("TARGET", stage="f")
    assert out.error and not out.blank and sent(fake, "TARGET") == MAX_RETRIES + 1
    assert not client(fake.base_url, db).complete("TARGET", stage="f").ok
    assert sent(fake, "TARGET") == 2 * (MAX_RETRIES + 1)


# ---------------------------------------------------------------------------------------
# many faults at once, concurrently; a server slower than the timeout; the budget
# ---------------------------------------------------------------------------------------


def test_every_fault_at_once_concurrently_is_survived_without_a_duplicate(fake, tmp_path):
    names = list(FAULTS)
    for name in names:
        fake.rule(f"FAULT-{name}", FAULTS[name][0], times=1)
    prompts = [f"FAULT-{n}" for n in names] + [f"plain {i}" for i in range(6)]
    prompts += prompts[:3]  # duplicates within the batch
    db = tmp_path / "cache.sqlite"
    c = client(fake.base_url, db, concurrency=4)
    out = c.complete_many(prompts, stage="mix")
    assert all(o.ok for o in out) and [o.text for o in out] == [f"echo: {p}" for p in prompts]
    unique = list(dict.fromkeys(prompts))
    # each faulty prompt exactly twice (fault + retry), each other prompt exactly once
    for p in unique:
        assert sent(fake, p) == (2 if p.startswith("FAULT") else 1), p
    assert len(fake.posts()) == len(unique) + len(names)
    s = c.ledger.summary("mix")[0]
    assert (s["calls"], s["requests"], s["failed_requests"]) == (
        len(unique), len(unique) + len(names), len(names))
    assert len(c.cache) == len(unique)
    n = len(fake.posts())
    assert all(o.cached for o in client(fake.base_url, db).complete_many(prompts, stage="mix"))
    assert len(fake.posts()) == n


def test_a_server_slower_than_the_timeout_costs_each_attempt_and_the_cap_holds(fake, tmp_path):
    fake.rule("", {"sleep": 0.6})  # every request
    db = tmp_path / "cache.sqlite"
    c = client(fake.base_url, db)
    worst = c.worst_case_cost(c.build_request("slow"))
    t0 = time.monotonic()
    with pytest.raises(StrongModelError, match="no answer within the timeout of 0.25 s"):
        c.complete("slow", stage="t")
    assert time.monotonic() - t0 < 3 * TIMEOUT_S + 1.0
    assert sent(fake, "slow") == MAX_RETRIES + 1
    assert [r["cost_usd"] for r in c.ledger.calls()] == pytest.approx([worst] * 3)
    assert c.ledger.spent() == pytest.approx(3 * worst) and len(c.cache) == 0
    # with a cap of 2.5 worst cases left, the third attempt is not sent
    capped = client(fake.base_url, db, budget=c.ledger.spent() + 2.5 * worst)
    with pytest.raises(BudgetExceeded, match="Nothing was sent"):
        capped.complete("slow again", stage="u")
    assert sent(fake, "slow again") == 2
    assert capped.ledger.spent() <= capped.ledger.budget_usd


def test_connection_refused_is_not_paid_and_is_retried(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    c = client(url, tmp_path / "c.sqlite")
    with pytest.raises(StrongModelError, match="connection failed"):
        c.complete("hi", stage="t")
    rows = c.ledger.calls()
    assert len(rows) == MAX_RETRIES + 1 and all(r["cost_usd"] == 0 for r in rows)


# ---------------------------------------------------------------------------------------
# the local server: only our own process, serving our alias, is ever accepted
# ---------------------------------------------------------------------------------------


class FakeProcessServer(LocalServer):
    """A LocalServer whose process is the fake server (`serves`: the alias it lists)."""

    def __init__(self, tmp_path: Path, *, serves: str | None = "ours", cmd: list[str] | None = None,
                 **kw: Any) -> None:
        gguf = tmp_path / "model.gguf"
        gguf.write_bytes(b"GGUF fake model")
        kw.setdefault("startup_timeout_s", 10.0)
        kw.setdefault("log_path", tmp_path / "server.log")
        super().__init__(gguf, alias="ours", n_threads=1, n_ctx=256, logits_all=False, **kw)
        self.serves, self.cmd = serves, cmd

    def command(self) -> list[str]:
        if self.cmd is not None:
            return self.cmd
        return [sys.executable, str(FAKESERVER), "--port", str(self.port), "--model",
                str(self.serves)]




def test_a_port_already_served_by_another_server_is_refused(tmp_path):
    with FakeOpenAI(models=("ours",)) as other:  # even one listing our alias
        port = int(other.base_url.rsplit(":", 1)[1].split("/")[0])
        srv = FakeProcessServer(tmp_path, port=port)
        with pytest.raises(LocalServerError, match=f"port {port}.*already in use"):
            srv.start()
        assert srv.proc is None  # nothing was started
        assert other.requests == []  # and the other server was not even asked


def test_a_foreign_server_on_our_port_is_not_taken_for_ours(tmp_path, monkeypatch):
    """The race: the free port chosen is taken by another server before ours binds it."""
    import cowest.server as server_mod

    with FakeOpenAI(models=("ours",)) as other:
        port = int(other.base_url.rsplit(":", 1)[1].split("/")[0])
        monkeypatch.setattr(server_mod, "_free_port", lambda: port)
        srv = FakeProcessServer(tmp_path, cmd=[sys.executable, "-c", "import time; "
                                               "time.sleep(30)"], startup_timeout_s=1.0)
        with pytest.raises(LocalServerError, match="not open in our process"):
            srv.start()
        assert other.requests and not srv.running  # it answered, and was not accepted


def test_our_process_must_serve_our_alias(tmp_path):
    srv = FakeProcessServer(tmp_path, serves="somebody-else", startup_timeout_s=1.5)
    with pytest.raises(LocalServerError, match=r"\['somebody-else'\].*not our alias 'ours'"):
        srv.start()
    assert not srv.running and process_gone(srv.proc.pid)


def test_our_process_dying_while_starting_reports_its_log(tmp_path):
    srv = FakeProcessServer(tmp_path, cmd=[sys.executable, "-c", "import sys; "
                                           "print('cannot load model: boom', flush=True); "
                                           "sys.exit(3)"])
    with pytest.raises(LocalServerError, match=r"exited with code 3(.|\n)*boom"):
        srv.start()


def test_our_own_server_is_accepted_identified_by_its_file_and_stopped(tmp_path):
    import hashlib

    srv = FakeProcessServer(tmp_path)
    with srv:
        assert srv.running and srv.startup_s is not None
        pid = srv.proc.pid
        sha = hashlib.sha256((tmp_path / "model.gguf").read_bytes()).hexdigest()
        assert srv.identity == f"local:{sha}"
        c = StrongClient("s", "ours", endpoint=srv.base_url, cache=RequestCache(
            tmp_path / "c.sqlite"), ledger=Ledger(tmp_path / "c.sqlite"), api_key_env=None,
            mode="chat", max_tokens=5, temperature=0.0, top_p=1.0, timeout_s=5.0,
            max_retries=0, concurrency=1, price_in=0.0, price_out=0.0, free=True,
            system_prompt=None, extra_body={}, endpoint_id=srv.identity)
        assert c.complete("hello", stage="t").text == "echo: hello"
        assert c.build_request("x")["server"] == srv.identity  # not the port
    assert not srv.running and process_gone(pid)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_server_started_from_a_worker_thread_dies_with_its_process(tmp_path, how):
    script = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(FAKESERVER.parent)!r})
        from test_faults import FakeProcessServer
        from pathlib import Path
        box = []
        def start():
            box.append(FakeProcessServer(Path({str(tmp_path)!r})).start())
        t = threading.Thread(target=start)
        t.start(); t.join()  # the starting thread is gone; the server must stay up
        time.sleep(0.3)
        assert box[0].running
        print(box[0].proc.pid, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
    try:
        server_pid = int(child.stdout.readline())
        assert not process_gone(server_pid)
        child.send_signal(getattr(signal, how))
        assert child.wait(timeout=20) == -getattr(signal, how)
        deadline = time.monotonic() + 10
        while not process_gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(server_pid)
    finally:
        if child.poll() is None:
            child.kill()


def test_a_server_started_in_a_thread_of_a_pool_outlives_that_thread(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        srv = pool.submit(lambda: FakeProcessServer(tmp_path).start()).result()
    # the pool's thread has ended; the server is still ours and up
    assert srv.running and threading.active_count() >= 1
    srv.stop()
    assert not srv.running


def test_a_server_outlives_the_main_thread_while_another_thread_still_uses_it(tmp_path):
    """Only the end of the process stops it: the main thread may end first (Python then
    waits for the non-daemon threads, which may still need their server)."""
    script = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(FAKESERVER.parent)!r})
        from test_faults import FakeProcessServer
        from pathlib import Path
        def work():
            srv = FakeProcessServer(Path({str(tmp_path)!r})).start()
            print(srv.proc.pid, flush=True)
            time.sleep(1.0)  # the main thread has ended by now
            print("running" if srv.running else "stopped", flush=True)
        threading.Thread(target=work).start()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=30)
    pid, state = out.stdout.split()
    assert state == "running", out.stderr
    deadline = time.monotonic() + 10
    while not process_gone(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(int(pid))  # and gone with the process


# ---------------------------------------------------------------------------------------
# a pool of servers: started together at the first miss, all ours, stopped together
# ---------------------------------------------------------------------------------------


def _pool(tmp_path: Path, n: int, **kw: Any) -> ServerPool:
    return ServerPool([FakeProcessServer(tmp_path, log_path=tmp_path / f"server-{i}.log", **kw)
                       for i in range(n)])


def test_a_pool_starts_at_the_first_miss_on_distinct_ports_and_stops_together(tmp_path):
    pool = _pool(tmp_path, 3)
    db = tmp_path / "c.sqlite"
    c = StrongClient("s", "ours", endpoint=pool, cache=RequestCache(db), ledger=Ledger(db),
                     api_key_env=None, mode="chat", max_tokens=5, temperature=0.0, top_p=1.0,
                     timeout_s=5.0, max_retries=0, concurrency=3, price_in=0.0, price_out=0.0,
                     free=True, system_prompt=None, extra_body={})
    try:
        assert pool.started == 0 and all(s.proc is None for s in pool.servers)
        prompts = [f"hello {i}" for i in range(9)]
        out = c.complete_many(prompts, stage="t")  # from the client's worker threads
        assert [o.text for o in out] == [f"echo: {p}" for p in prompts]
        assert pool.started == 3 and pool.running
        ports = [s.port for s in pool.servers]
        assert len(set(ports)) == 3 and set(pool.base_urls) == {s.base_url for s in pool.servers}
        assert c.build_request("x")["server"] == pool.identity == pool.servers[0].identity
        pids = [s.proc.pid for s in pool.servers]
        pool.start()  # idempotent: nothing new
        assert [s.proc.pid for s in pool.servers] == pids
    finally:
        pool.stop()
    assert pool.started == 0 and all(process_gone(p) for p in pids)


def test_a_pool_with_a_server_that_cannot_start_stops_the_others(tmp_path):
    good = FakeProcessServer(tmp_path, log_path=tmp_path / "good.log")
    bad = FakeProcessServer(tmp_path, log_path=tmp_path / "bad.log", cmd=[
        sys.executable, "-c", "import sys, time; time.sleep(0.5); print('boom', flush=True); "
        "sys.exit(3)"])
    pool = ServerPool([good, bad])
    with pytest.raises(LocalServerError, match=r"exited with code 3(.|\n)*boom"):
        pool.start()
    assert pool.started == 0 and not good.running and process_gone(good.proc.pid)


def test_a_pool_refuses_servers_that_differ(tmp_path):
    a = FakeProcessServer(tmp_path)
    b = LocalServer(tmp_path / "model.gguf", alias="ours", n_threads=2, n_ctx=256,
                    logits_all=False)
    with pytest.raises(ValueError, match="must be identical"):
        ServerPool([a, b])
    with pytest.raises(ValueError, match="at least one"):
        ServerPool([])

