"""cowest.llama_server: the fast logprob path returns exactly what llama-cpp-python returns.

Both classes load the same GGUF with `logits_all=True`; each case runs the same greedy
completion through the unpatched `llama_cpp.Llama` and through `FastLogprobLlama`, and the
whole response (text, finish reason, usage, logprobs) must be equal. Floats are compared
exactly: the fast path applies the library's own log-softmax to the same score rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cowest.assets import gguf_path
from cowest.llama_server import FastLogprobLlama, _top_indices

PROMPT = ("<|im_start|>user\nWhat is the capital of France? Think step by step, then end with a "
          "line 'Answer: X'.<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def models():
    import llama_cpp

    kw = dict(model_path=str(gguf_path("smollm2-135m")), n_ctx=512, n_threads=2, n_threads_batch=2,
              logits_all=True, verbose=False, seed=0)
    return llama_cpp.Llama(**kw), FastLogprobLlama(**kw)


def _plain(d):
    """The response as JSON sees it (numpy floats become Python floats), minus id and time."""
    d = json.loads(json.dumps(d, default=float))
    d.pop("id"), d.pop("created")
    return d


@pytest.mark.parametrize("case", [
    dict(max_tokens=24, logprobs=0),                       # stops at the token limit
    dict(max_tokens=40, logprobs=3, stop=["\n"]),          # a stop string cuts the text
    dict(max_tokens=200, logprobs=2),                      # runs to the end token
    dict(max_tokens=16, logprobs=5, stop=["Paris"]),
])
def test_fast_logprobs_equal_the_library(models, case):
    slow, fast = models
    want = slow.create_completion(PROMPT, temperature=0.0, repeat_penalty=1.0, **case)
    got = fast.create_completion(PROMPT, temperature=0.0, repeat_penalty=1.0, **case)
    assert got["choices"][0]["logprobs"]["token_logprobs"], "the case generated no token"
    assert _plain(got) == _plain(want)


def test_fast_logprobs_equal_after_a_reused_prefix(models):
    """A second prompt sharing the first one's prefix evaluates only its suffix."""
    slow, fast = models
    for m in (slow, fast):
        m.create_completion(PROMPT, max_tokens=4, temperature=0.0, logprobs=1)
    longer = PROMPT + "Let me think."
    want = slow.create_completion(longer, max_tokens=12, temperature=0.0, repeat_penalty=1.0, logprobs=2)
    got = fast.create_completion(longer, max_tokens=12, temperature=0.0, repeat_penalty=1.0, logprobs=2)
    assert _plain(got) == _plain(want)


def test_chat_logprobs_equal_the_library(models):
    slow, fast = models
    msgs = [{"role": "user", "content": "Name a colour, then stop."}]
    want = slow.create_chat_completion(msgs, max_tokens=16, temperature=0.0, logprobs=True, top_logprobs=2)
    got = fast.create_chat_completion(msgs, max_tokens=16, temperature=0.0, logprobs=True, top_logprobs=2)
    assert got["choices"][0]["logprobs"]["content"]
    assert _plain(got) == _plain(want)


def test_top_indices_order_is_the_librarys_including_ties():
    row = np.array([0.5, 2.0, 2.0, -1.0, 2.0, 1.0], dtype=np.single)
    want = [i for _, i in sorted(zip(row, range(len(row))), reverse=True)]
    for k in range(len(row) + 2):
        assert _top_indices(row, k) == want[:k]
