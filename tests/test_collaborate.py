"""The answer pass (cowest.collaborate): an output without its answer line (cut by max_tokens,
or ended without it) is finished by one more short call, against a real llama.cpp server
(SmolLM2, chat)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowest.assets import get_asset, gguf_path
from cowest.cache import RequestCache
from cowest.client import StrongClient
from cowest.collaborate import Collaborator
from cowest.ledger import Ledger
from cowest.server import LocalServer
from cowest.tasks import get_task
from cowest.tasks.extract import has_answer_line


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    srv = LocalServer(gguf_path("smollm2-135m"), alias="smol", n_ctx=1024, n_threads=1,
                      chat_format=get_asset("smollm2-135m").chat_format, logits_all=False,
                      log_path=tmp_path_factory.mktemp("smol") / "server.log")
    with srv:
        yield srv


def _posts(log: Path) -> int:
    return sum('"POST /v1/' in line for line in log.read_text(errors="replace").splitlines())


def _collab(srv, db: Path, answer_tokens):
    client = StrongClient("strong", "smol", endpoint=srv.base_url, mode="chat", max_tokens=6, temperature=0.0,
                          top_p=1.0, timeout_s=120.0, max_retries=1, concurrency=1, price_in=0.0, price_out=0.0,
                          free=True, endpoint_id=srv.identity, api_key_env=None, extra_body=srv.request_defaults,
                          cache=RequestCache(db), ledger=Ledger(db), system_prompt=None)
    return Collaborator(get_task("synth_ifqa"), client, answer_tokens=answer_tokens)


def test_cut_outputs_get_an_answer_line_from_one_more_call(smol, tmp_path):
    task = get_task("synth_ifqa")
    items = task.load("test", 3, 0)
    drafts = ["Let me think about this step by step, starting from the facts I know."] * 3
    plain = _collab(smol, tmp_path / "plain.sqlite", None).refine(items, drafts, stage="t")
    # 6 tokens cannot reach an answer line: without the pass the outputs stay cut
    assert all(o.finish_reason == "length" and not has_answer_line(o.text) and not o.answer_pass for o in plain)

    before = _posts(smol.log_path)
    col = _collab(smol, tmp_path / "pass.sqlite", 12)
    out = col.refine(items, drafts, stage="t")
    assert _posts(smol.log_path) - before == 6  # one refinement and one answer pass per item
    for o, p in zip(out, plain):
        assert o.ok and o.answer_pass and has_answer_line(o.text)
        assert o.text.startswith(p.text.rstrip())  # the reasoning is kept, the answer line follows it
        assert o.completion_tokens > p.completion_tokens
    assert sum(r["calls"] for r in col.client.ledger.summary()) == 6
    # the rerun is answered from the cache: nothing reaches the server
    before = _posts(smol.log_path)
    again = _collab(smol, tmp_path / "pass.sqlite", 12).refine(items, drafts, stage="t")
    assert [o.text for o in again] == [o.text for o in out] and _posts(smol.log_path) == before
    # the pass's prompt holds the question and the cut reasoning, not the gold answer
    prompt = col.answer_prompt(col.refine_prompt(items[0], drafts[0]), out[0].text)
    assert task.render_question(items[0]) in prompt and "Your reasoning stopped before its answer line" in prompt
