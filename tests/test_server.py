"""Integration: the real llama.cpp server (llama-cpp-python) and the real `openai` client.

Uses the offline models (Gemma-3-270M base in completion mode; SmolLM2-135M-Instruct in
chat mode). Marked `server` for selection (`-m server` / `-m "not server"`); never skipped.
The servers use 1 thread: llama.cpp's spin-waiting threads slow to a crawl with 2 threads
on 2 cores when anything else runs (such as other tests).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from cowest.assets import get_asset, gguf_path
try:
    from tests.fakeserver import process_gone
except ImportError:  # run from inside tests/
    from fakeserver import process_gone  # type: ignore[no-redef]
from cowest.cache import CacheMiss, RequestCache
from cowest.client import StrongClient
from cowest.config import StrongSpec
from cowest.ledger import Ledger
from cowest.server import LocalServer, LocalServerError, ServerPool

pytestmark = pytest.mark.server


def _posts(log: Path) -> int:
    """Requests that reached the server, from uvicorn's access log."""
    return sum('"POST /v1/' in line for line in log.read_text(errors="replace").splitlines())




def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


#: Gemma-3-270M base as a profile would name it: completion endpoint, short answers.
GEMMA = StrongSpec(name="strong", model="gemma3-270m", mode="completion", max_tokens=6,
                   n_threads=1, n_ctx=512, max_retries=1, timeout_s=60)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """GEMMA's server, built from the spec, log-probabilities enabled (FLARE needs them)."""
    log = tmp_path_factory.mktemp("gemma") / "server.log"
    srv = LocalServer.from_spec(GEMMA, logits_all=True, log_path=log)
    with srv:
        yield srv
    assert not srv.running and process_gone(srv.proc.pid)


def _client(base_url: str, db: Path, mode="readwrite") -> StrongClient:
    """GEMMA's client, built from the spec as the pipeline builds it (local backend)."""
    c = StrongClient.from_spec(GEMMA, endpoint=base_url, cache=RequestCache(db, mode=mode),
                               ledger=Ledger(db))
    c.retry_base_s = 0.05
    return c


def test_completion_then_cache_hit_reaches_no_server(gemma, tmp_path):
    db = tmp_path / "cache.sqlite"
    prompt = "Q: What is the capital of France?\nA:"
    first = _client(gemma.base_url, db).complete(prompt, stage="it")
    assert first.ok and first.text.strip() and not first.cached
    assert first.prompt_tokens > 5 and 1 <= first.completion_tokens <= 6
    assert first.latency_s > 0
    n = _posts(gemma.log_path)
    # the same request through a client whose server does not exist: base_url is not in
    # the cache key, so the answer comes from the cache, and nothing reaches any server
    second = _client(_dead_url(), db).complete(prompt, stage="it")
    assert second.cached and second.text == first.text
    assert second.prompt_tokens == first.prompt_tokens
    assert _posts(gemma.log_path) == n
    s = Ledger(db).summary("it")[0]
    assert (s["calls"], s["cache_hits"], s["errors"]) == (2, 1, 0)
    # temperature 0 without repeat penalty is plain greedy: the same text again
    rerun = _client(gemma.base_url, tmp_path / "other.sqlite").complete(prompt, stage="it")
    assert rerun.text == first.text


def test_replay_mode_raises_cache_miss_naming_the_request(gemma, tmp_path):
    db = tmp_path / "cache.sqlite"
    _client(gemma.base_url, db).complete("The sky is", stage="it")
    replay = _client(gemma.base_url, db, mode="replay")
    n = _posts(gemma.log_path)
    assert replay.complete("The sky is", stage="it").cached
    with pytest.raises(CacheMiss) as ei:
        replay.complete("Grass is usually", stage="it")
    msg = str(ei.value)
    assert "replay mode is on" in msg and GEMMA.model in msg and "Grass is usually" in msg
    assert _posts(gemma.log_path) == n


def test_completion_logprobs(gemma, tmp_path):
    out = _client(gemma.base_url, tmp_path / "c.sqlite").complete(
        "One, two, three, four,", stage="flare", logprobs=True, top_logprobs=2)
    assert out.ok and out.logprobs is not None
    assert len(out.logprobs) == out.completion_tokens
    assert "".join(t for t, _ in out.logprobs) == out.text
    assert all(lp is not None and lp <= 0 for _, lp in out.logprobs)
    assert out.top_logprobs is not None and 1 <= len(out.top_logprobs[0]) <= 3


def test_chat_logprobs_with_smollm2_and_cleanup_after_interrupt(tmp_path):
    log = tmp_path / "smol.log"
    srv = LocalServer(gguf_path("smollm2-135m"), alias="smol", n_ctx=512, n_threads=1,
                      chat_format=get_asset("smollm2-135m").chat_format, logits_all=True,
                      log_path=log)
    with pytest.raises(KeyboardInterrupt):
        with srv:
            db = tmp_path / "c.sqlite"
            c = StrongClient("strong", "smol", endpoint=srv.base_url, mode="chat",
                             max_tokens=5, temperature=0.0, top_p=1.0, timeout_s=120.0,
                             max_retries=4, concurrency=1, price_in=0.0, price_out=0.0,
                             free=True, endpoint_id=srv.identity,
                             api_key_env=None, extra_body=srv.request_defaults,
                             cache=RequestCache(db), ledger=Ledger(db),
                             system_prompt="You are a helpful assistant.")
            out = c.complete("Say hello.", stage="it", logprobs=True, top_logprobs=2)
            assert out.ok and out.text.strip()
            assert out.logprobs is not None and len(out.logprobs) == out.completion_tokens
            assert all(lp <= 0 for _, lp in out.logprobs)
            assert out.top_logprobs and len(out.top_logprobs[0]) >= 1
            pid = srv.proc.pid
            raise KeyboardInterrupt  # Ctrl-C inside the block
    assert not srv.running and process_gone(pid)


def test_sigterm_to_the_parent_stops_the_server_and_still_kills_the_parent(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from cowest.server import LocalServer
        s = LocalServer({str(gguf_path("smollm2-135m"))!r}, alias="x", n_threads=1,
                        n_ctx=256, logits_all=False, log_path={str(tmp_path / "x.log")!r}).start()
        print(s.proc.pid, flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    try:
        server_pid = int(child.stdout.readline())
        assert not process_gone(server_pid)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == -signal.SIGTERM  # the signal is not swallowed
        deadline = time.monotonic() + 10
        while not process_gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_gone(server_pid)
    finally:
        if child.poll() is None:
            child.kill()


def test_sigterm_stops_a_server_that_a_worker_thread_started(tmp_path):
    """Python can install a SIGTERM handler only from the main thread: a server started by a
    worker thread is stopped by the kernel (parent-death signal of the long-lived thread
    that forked it), even after the worker thread has ended."""
    script = textwrap.dedent(f"""
        import threading, time
        from cowest.server import LocalServer
        box = []
        def start():
            box.append(LocalServer({str(gguf_path("smollm2-135m"))!r}, alias="x", n_threads=1,
                                   n_ctx=256, logits_all=False,
                                   log_path={str(tmp_path / "x.log")!r}).start())
        t = threading.Thread(target=start)
        t.start(); t.join()
        time.sleep(0.5)
        assert box[0].running  # the starting thread's end did not stop it
        print(box[0].proc.pid, flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    try:
        server_pid = int(child.stdout.readline())
        assert not process_gone(server_pid)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while not process_gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_gone(server_pid)
    finally:
        if child.poll() is None:
            child.kill()


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    srv = LocalServer(bogus, alias="bogus", n_threads=1, n_ctx=256, logits_all=False,
                      log_path=tmp_path / "bogus.log", startup_timeout_s=60)
    with pytest.raises(LocalServerError) as ei:
        srv.start()
    msg = str(ei.value)
    assert "exited with code" in msg and "bogus.log" in msg and "Log" in msg
    assert not srv.running
    with pytest.raises(LocalServerError, match="not found"):
        LocalServer(tmp_path / "missing.gguf", alias="m", n_threads=1, n_ctx=256,
                    logits_all=False).start()


#: SmolLM2-135M-Instruct in chat mode as a profile would name it, laid out as measured best
#: on 2 cores: two 1-thread servers, two client threads.
SMOL_POOL = StrongSpec(name="strong", model="smollm2-135m", max_tokens=8, n_threads=1,
                       servers=2, concurrency=2, n_ctx=512, max_retries=1, timeout_s=60)
#: questions in the shape of the refinement prompts: one shared instruction, then the item
QUESTIONS = [f"Read the question and the draft answer, then give the final answer.\n"
             f"Question: What is {a} plus {b}?\nDraft: {a + b + d}\nFinal answer:"
             for a, b, d in [(2, 3, 0), (7, 5, 1), (10, 4, 0), (6, 6, 2), (9, 1, 0), (3, 8, 1)]]


def test_two_real_servers_answer_as_one_does_and_a_cached_rerun_starts_none(tmp_path):
    one = StrongSpec(**{**{f: getattr(SMOL_POOL, f) for f in type(SMOL_POOL).model_fields},
                        "servers": 1, "concurrency": 1})
    texts = {}
    for spec in (one, SMOL_POOL):
        db = tmp_path / f"{spec.servers}.sqlite"
        pool = ServerPool.from_spec(spec, logits_all=False, log_path=tmp_path / f"s{spec.servers}.log")
        with ExitStack() as stack:
            stack.callback(pool.stop)
            c = StrongClient.from_spec(spec, endpoint=pool, cache=RequestCache(db), ledger=Ledger(db))
            assert pool.started == 0
            out = c.complete_many(QUESTIONS, stage="it")
            assert all(o.ok and not o.cached for o in out)
            assert pool.started == spec.servers
            texts[spec.servers] = [o.text for o in out]
            posts = [_posts(s.log_path) for s in pool.servers]
            assert sum(posts) == len(QUESTIONS) and min(posts) >= 1, posts  # each one answered
    assert texts[2] == texts[1]  # whichever server answers, the same text
    # a rerun on the cache: a fresh pool, never started
    db = tmp_path / "2.sqlite"
    pool = ServerPool.from_spec(SMOL_POOL, logits_all=False, log_path=tmp_path / "again.log")
    with ExitStack() as stack:
        stack.callback(pool.stop)
        c = StrongClient.from_spec(SMOL_POOL, endpoint=pool, cache=RequestCache(db), ledger=Ledger(db))
        again = c.complete_many(QUESTIONS, stage="it")
        assert [o.text for o in again] == texts[2] and all(o.cached for o in again)
        assert pool.started == 0 and all(s.proc is None for s in pool.servers)
        assert not c.complete("Say hello.", stage="it").cached  # the first miss starts it
        assert pool.started == 2
    assert pool.started == 0

