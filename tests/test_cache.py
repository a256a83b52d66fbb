"""RequestCache and Ledger: key stability and sensitivity, concurrency, shipping, replay."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pytest

from cowest.cache import CacheMiss, RequestCache, RequestCacheError, normalize_request, request_key
from cowest.ledger import (
    MESSAGE_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    BudgetExceeded,
    Ledger,
    prompt_token_bound,
)

BASE = {
    "model": "gpt-4",
    "endpoint": "chat",
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "If the sun were cold, would ice melt?"}],
    "temperature": 0.0,
    "top_p": 1.0,
    "max_tokens": 64,
    "stop": None,
    "logprobs": False,
    "top_logprobs": 0,
    "seed": None,
    "extra_body": {"repeat_penalty": 1.0},
    "sample_index": 0,
}


# ---------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------


def test_key_is_stable_across_order_and_equivalent_spellings():
    k = request_key(BASE)
    assert k == request_key(dict(reversed(list(BASE.items()))))
    assert k == request_key({**BASE, "temperature": 0, "top_p": 1})  # int vs float
    assert k == request_key({k2: v for k2, v in BASE.items() if k2 != "sample_index"})
    assert k == request_key({**BASE, "stop": []})
    assert request_key({**BASE, "stop": "\n"}) == request_key({**BASE, "stop": ["\n"]})
    assert len(k) == 64 and k == request_key(json.loads(json.dumps(BASE)))


def test_key_ignores_where_the_server_is_and_who_asks():
    k = request_key(BASE)
    assert k == request_key({**BASE, "base_url": "http://127.0.0.1:5555/v1"})
    assert k == request_key({**BASE, "base_url": "https://api.openai.com/v1",
                             "api_key": "sk-xyz", "timeout_s": 3, "stage": "other"})
    assert "api_key" not in normalize_request({**BASE, "api_key": "sk-xyz"})


@pytest.mark.parametrize("field,value", [
    ("model", "gpt-3.5-turbo"),
    ("endpoint", "completion"),
    ("messages", [{"role": "user", "content": "If the sun were cold, would ice melt?"}]),
    ("prompt", "If the sun were cold"),
    ("temperature", 0.7),
    ("top_p", 0.9),
    ("max_tokens", 65),
    ("stop", ["\n\n"]),
    ("logprobs", True),
    ("top_logprobs", 5),
    ("seed", 1),
    ("extra_body", {"repeat_penalty": 1.1}),
    ("sample_index", 1),
    ("server", "https://api.example.com/v1"),  # the endpoint's identity (not its port)
])
def test_key_changes_with_everything_that_changes_the_answer(field, value):
    assert request_key({**BASE, field: value}) != request_key(BASE)


# ---------------------------------------------------------------------------------------
# get / put / modes
# ---------------------------------------------------------------------------------------


def test_get_put_round_trip_and_persistence(tmp_path: Path):
    db = tmp_path / "c.sqlite"
    cache = RequestCache(db)
    assert cache.get(BASE) is None
    cache.put(BASE, {"text": "No.", "prompt_tokens": 12})
    assert cache.get({**BASE, "base_url": "http://elsewhere/v1"}) == {"text": "No.",
                                                                     "prompt_tokens": 12}
    assert BASE in cache and len(cache) == 1
    again = RequestCache(db, mode="replay")  # a new process would see the same
    assert again.get(BASE)["text"] == "No."


def test_replay_miss_names_model_prompt_and_how_to_turn_it_off(tmp_path: Path):
    cache = RequestCache(tmp_path / "c.sqlite", mode="replay")
    with pytest.raises(CacheMiss) as ei:
        cache.get(BASE)
    msg = str(ei.value)
    assert "replay mode is on" in msg
    assert "'gpt-4'" in msg
    assert "If the sun were cold" in msg
    assert "readwrite" in msg
    cache.put(BASE, {"text": "x"})  # replay never writes
    with pytest.raises(CacheMiss):
        cache.get(BASE)


def test_off_mode_neither_reads_nor_writes(tmp_path: Path):
    db = tmp_path / "c.sqlite"
    RequestCache(db).put(BASE, {"text": "x"})
    off = RequestCache(tmp_path / "never.sqlite", mode="off")
    off.put(BASE, {"text": "y"})
    assert off.get(BASE) is None
    assert not (tmp_path / "never.sqlite").exists()
    with pytest.raises(ValueError):
        RequestCache(db, mode="write")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------------------


def _writer(db: str, tag: str, n: int) -> None:
    cache, ledger = RequestCache(db), Ledger(db)
    for i in range(n):
        req = {**BASE, "sample_index": i, "model": f"m-{tag}"}
        cache.put(req, {"text": f"{tag}-{i}"})
        ledger.record(f"stage-{tag}", f"m-{tag}", cached=False, prompt_tokens=1,
                      completion_tokens=2, latency_s=0.001)


def test_concurrent_writers_threads_and_processes_lose_nothing(tmp_path: Path):
    db = str(tmp_path / "c.sqlite")
    RequestCache(db)  # create the schema once, like a run would
    n = 60
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(db, f"p{j}", n)) for j in range(2)]
    threads = [threading.Thread(target=_writer, args=(db, f"t{j}", n)) for j in range(4)]
    for w in procs + threads:
        w.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache, ledger = RequestCache(db, mode="replay"), Ledger(db)
    assert len(cache) == 6 * n
    for tag in ("p0", "p1", "t0", "t3"):
        assert cache.get({**BASE, "sample_index": n - 1, "model": f"m-{tag}"})["text"] == \
            f"{tag}-{n - 1}"
    tot = ledger.totals()
    assert tot["calls"] == 6 * n and tot["prompt_tokens"] == 6 * n
    assert tot["completion_tokens"] == 12 * n
    assert {r["stage"] for r in ledger.summary()} == {f"stage-{t}" for t in
                                                      ("p0", "p1", "t0", "t1", "t2", "t3")}


# ---------------------------------------------------------------------------------------
# shipping
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cache.jsonl", "cache.jsonl.gz"])
def test_export_import_round_trip(tmp_path: Path, name: str):
    src = RequestCache(tmp_path / "src.sqlite")
    reqs = [{**BASE, "sample_index": i} for i in range(5)] + [
        {**BASE, "endpoint": "completion", "messages": None, "prompt": "Q: 2+2?\nA:"}]
    for i, r in enumerate(reqs):
        src.put(r, {"text": f"answer {i}", "logprobs": [["a", -0.1]]})
    out = tmp_path / "ship" / name
    assert src.export_jsonl(out) == len(reqs)
    raw = gzip.open(out, "rt").read() if name.endswith(".gz") else out.read_text()
    assert len(raw.splitlines()) == len(reqs)
    if name.endswith(".gz"):  # deterministic bytes: the same cache exports identically
        first = out.read_bytes()
        src.export_jsonl(out)
        assert out.read_bytes() == first

    dst = RequestCache(tmp_path / "dst.sqlite", mode="replay")
    assert dst.import_jsonl(out) == len(reqs)
    assert dst.import_jsonl(out) == 0  # idempotent
    for i, r in enumerate(reqs):
        assert dst.get(r) == {"text": f"answer {i}", "logprobs": [["a", -0.1]]}


# ---------------------------------------------------------------------------------------
# ledger
# ---------------------------------------------------------------------------------------


def test_ledger_summary_totals_cost_and_persistence(tmp_path: Path):
    db = tmp_path / "c.sqlite"
    led = Ledger(db, prices={"gpt-4": (30.0, 60.0)})
    led.record("collab", "gpt-4", cached=False, prompt_tokens=1000, completion_tokens=500,
               latency_s=1.5)
    led.record("collab", "gpt-4", cached=True, prompt_tokens=1000, completion_tokens=500)
    led.record("alone", "gpt-4", cached=False, prompt_tokens=10, error="empty reply",
               price_in=0.0, price_out=0.0)
    led.record("alone", "local", cached=False, prompt_tokens=7, completion_tokens=3)
    # a new Ledger (another process) sees the same totals
    rows = {(r["stage"], r["model"]): r for r in Ledger(db).summary()}
    c = rows[("collab", "gpt-4")]
    assert c["calls"] == 2 and c["cache_hits"] == 1 and c["errors"] == 0
    assert c["prompt_tokens"] == 2000 and c["completion_tokens"] == 1000
    assert c["cost_usd"] == pytest.approx(0.03 + 0.03)  # the cache hit is free
    assert c["latency_s"] == pytest.approx(1.5)
    assert rows[("alone", "gpt-4")]["errors"] == 1
    assert rows[("alone", "local")]["cost_usd"] == 0.0
    assert [r["model"] for r in led.summary("alone")] == ["gpt-4", "local"]
    tot = led.totals()
    assert tot["calls"] == 4 and tot["cache_hits"] == 1 and tot["errors"] == 1
    assert tot["cost_usd"] == pytest.approx(0.06)
    assert led.spent() == pytest.approx(0.06)
    assert len(led.calls()) == 4


def test_budget_cap_raises_with_a_clear_message(tmp_path: Path):
    led = Ledger(tmp_path / "c.sqlite", budget_usd=0.15, prices={"gpt-4": (30.0, 60.0)})
    worst = led.worst_case_cost("gpt-4", "x" * 4000, 256)  # 4000 + 16 + 64 in + 256 out
    assert worst == pytest.approx((4080 * 30 + 256 * 60) / 1e6)
    led.check_budget("gpt-4", worst)  # 0.13776 <= 0.15
    led.record("s", "gpt-4", cached=False, prompt_tokens=1000, completion_tokens=100)
    with pytest.raises(BudgetExceeded) as ei:
        led.check_budget("gpt-4", worst)
    msg = str(ei.value)
    assert "$0.0360 spent" in msg and "cap is $0.1500" in msg and "budget_usd" in msg
    led2 = Ledger(tmp_path / "d.sqlite", budget_usd=0.05)
    with led2.reserve("m", 0.03):  # calls in flight in this process count too
        with pytest.raises(BudgetExceeded, match="in flight"):
            led2.check_budget("m", 0.03)
    led2.check_budget("m", 0.03)  # released
    Ledger(tmp_path / "c.sqlite", budget_usd=None).check_budget("gpt-4", 1e9)  # no cap


def test_ledger_counts_calls_requests_and_retries(tmp_path: Path):
    led = Ledger(tmp_path / "c.sqlite")
    # a call answered at its 3rd attempt, a call that failed 2 times, a cache hit
    led.record("s", "m", cached=False, error="HTTP 500", attempt=1, final=False, cost_usd=0.1)
    led.record("s", "m", cached=False, error="timeout", attempt=2, final=False, cost_usd=0.1)
    led.record("s", "m", cached=False, prompt_tokens=5, completion_tokens=2, attempt=3)
    led.record("s", "m", cached=False, error="HTTP 503", attempt=1, final=False, cost_usd=0.1)
    led.record("s", "m", cached=False, error="HTTP 503", attempt=2, final=True, cost_usd=0.1)
    led.record("s", "m", cached=True, prompt_tokens=5, completion_tokens=2)
    (row,) = led.summary()
    assert (row["calls"], row["cache_hits"], row["requests"], row["failed_requests"],
            row["errors"]) == (3, 1, 5, 4, 1)
    assert row["cost_usd"] == pytest.approx(0.4)
    assert [(c["attempt"], c["final"]) for c in led.calls()] == [
        (1, 0), (2, 0), (3, 1), (1, 0), (2, 1), (1, 1)]


def test_a_ledger_file_of_an_older_version_gains_the_new_columns(tmp_path: Path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE calls (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
            stage TEXT NOT NULL, model TEXT NOT NULL, cached INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            latency_s REAL NOT NULL, cost_usd REAL NOT NULL, error TEXT);
        INSERT INTO calls VALUES (1, 0, 's', 'm', 0, 10, 5, 1.0, 0.5, NULL);
        INSERT INTO calls VALUES (2, 0, 's', 'm', 0, 10, 0, 1.0, 0.0, 'empty reply');
        INSERT INTO calls VALUES (3, 0, 's', 'm', 1, 10, 5, 0.0, 0.0, NULL);
    """)
    con.commit()
    con.close()
    led = Ledger(db)
    (row,) = led.summary()
    assert (row["calls"], row["cache_hits"], row["requests"], row["errors"]) == (3, 1, 2, 1)
    led.record("s", "m", cached=False, attempt=2, final=False, error="x")
    assert led.calls()[-1]["attempt"] == 2 and Ledger(db).totals()["calls"] == 3


@pytest.mark.parametrize("content", [b"this is not a database, just text\n" * 50,
                                     b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_corrupt_cache_file_names_itself_and_the_fix(tmp_path: Path, content: bytes):
    db = tmp_path / "results" / "cache.sqlite"
    db.parent.mkdir()
    db.write_bytes(content)
    for open_it in (RequestCache, Ledger, lambda p: RequestCache(p, mode="replay")):
        with pytest.raises(RequestCacheError) as ei:
            open_it(db)
        msg = str(ei.value)
        assert str(db) in msg and "Delete it or move it aside" in msg
        assert "requested again" in msg and isinstance(ei.value, ValueError)
    assert db.read_bytes() == content  # nothing was overwritten
    db.unlink()  # the fix works
    RequestCache(db).put(BASE, {"text": "x"})
    assert RequestCache(db, mode="replay").get(BASE) == {"text": "x"}


def test_the_prompt_bound_holds_for_the_real_tokenizers_and_chat_templates():
    """No tokenizer of the offline models (byte-level BPE: SmolLM2, Qwen; SentencePiece:
    Gemma) with its chat template counts more prompt tokens than `prompt_token_bound`."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from cowest.assets import ASSETS, gguf_path

    texts = ["What is 2+2?", "x" * 3000, "Crème brûlée à la française, s'il vous plaît. " * 20,
             "東京は日本の首都です。" * 30, "🙂🚀👍🏽" * 50, "a b  c   d\n\n\t" * 40, ""]
    assert prompt_token_bound("") == MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS
    for name in ASSETS:
        llm = llama_cpp.Llama(str(gguf_path(name)), vocab_only=True, verbose=False)
        template = llm.metadata.get("tokenizer.chat_template")
        bos = llm.detokenize([llm.token_bos()]).decode() if llm.token_bos() >= 0 else ""
        eos = llm.detokenize([llm.token_eos()]).decode()
        for t in texts:
            n = len(llm.tokenize(t.encode(), add_bos=True, special=False))
            assert n <= prompt_token_bound({"prompt": t}), (name, t[:12], n)
            for msgs in ([{"role": "user", "content": t}],
                         [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": t}]):
                if template is None:  # (Gemma's template is llama.cpp's "gemma" format)
                    continue
                prompt = Jinja2ChatFormatter(template=template, eos_token=eos,
                                             bos_token=bos)(messages=msgs).prompt
                n = len(llm.tokenize(prompt.encode(), add_bos=not prompt.startswith(bos),
                                     special=True))
                assert n <= prompt_token_bound({"messages": msgs}), (name, t[:12], n)
