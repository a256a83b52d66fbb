"""The weak model: prompt rendering, generation, log-probs, the CPU 4-bit trap.

Runs offline on SmolLM2-135M-Instruct (cowest.assets.hf_folder). The torch thread count is
COWEST_TEST_THREADS (default 1): on a shared 2-core machine two OpenMP threads are several
times slower than one as soon as another process is busy.
"""

from __future__ import annotations

import copy
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from cowest.assets import hf_folder
from cowest.weak import (
    BASE_PROMPT_FORMAT,
    FourBitTrapError,
    answer_confidence,
    completion_logprobs,
    end_token,
    generate,
    load_weak,
    mark_trained,
    render_prompt,
    stop_token_ids,
)

torch.set_num_threads(int(os.environ.get("COWEST_TEST_THREADS", "1")))

QUESTIONS = ["What is the capital of France?", "Name one fruit.", "Which is larger, 7 or 12?"]


@pytest.fixture(scope="module")
def folder():
    return hf_folder("smollm2-135m")


@pytest.fixture(scope="module")
def weak(folder):
    return load_weak(folder)


def test_load_defaults(weak):
    model, tok = weak
    assert not model.training
    assert model.dtype == torch.float32  # CPU
    assert all(not p.requires_grad for p in model.parameters())
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_render_prompt_uses_chat_template(weak):
    _, tok = weak
    text = render_prompt(tok, "Hi there?", system="Be brief.")
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there?"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == expected
    assert text.endswith("<|im_start|>assistant\n")
    # without a system text the template's default system prompt applies
    assert render_prompt(tok, "Hi there?").endswith("user\nHi there?<|im_end|>\n<|im_start|>assistant\n")
    assert end_token(tok) == "<|im_end|>"


def test_render_prompt_base_model_format(weak):
    model, tok = weak
    base_tok = copy.deepcopy(tok)
    base_tok.chat_template = None
    assert render_prompt(base_tok, "Is 3 > 2?") == "Question: Is 3 > 2?\nAnswer:\n"
    assert render_prompt(base_tok, "Is 3 > 2?", system="Facts.") == "Facts.\n\nQuestion: Is 3 > 2?\nAnswer:\n"
    assert BASE_PROMPT_FORMAT.endswith("Answer:\n")
    assert end_token(base_tok) == base_tok.eos_token
    assert base_tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(model, tok)


def test_generate_greedy_reproducible_and_batch_invariant(weak):
    model, tok = weak
    prompts = [render_prompt(tok, q) for q in QUESTIONS]
    a = generate(model, tok, prompts, max_new_tokens=12, batch_size=8, num_samples=2)
    b = generate(model, tok, prompts, max_new_tokens=12, batch_size=8)
    one = [generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert [len(x) for x in a] == [2, 2, 2]
    assert all(x[0] == x[1] for x in a)  # greedy: the samples are identical
    assert [x[0] for x in a] == [x[0] for x in b] == [x[0] for x in one]  # order restored, batch == single
    assert "Paris" in a[0][0]
    assert all("<|im_end|>" not in x[0] and "<|im_start|>" not in x[0] for x in a)


def test_generate_sampling_seeded(weak):
    model, tok = weak
    prompts = [render_prompt(tok, q) for q in QUESTIONS[:2]]
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.95, num_samples=3, batch_size=2)
    s1 = generate(model, tok, prompts, seed=7, **kw)
    s2 = generate(model, tok, prompts, seed=7, **kw)
    s3 = generate(model, tok, prompts, seed=8, **kw)
    assert s1 == s2
    assert [len(x) for x in s1] == [3, 3]
    assert s1 != s3
    assert len({t for x in s1 for t in x}) > 1  # samples differ from each other


def test_generate_stops_at_end_token(weak):
    model, tok = weak
    out = generate(model, tok, [render_prompt(tok, "Reply with the single word: yes")], max_new_tokens=48)
    n = len(tok(out[0][0], add_special_tokens=False)["input_ids"])
    assert n < 40  # it stopped at <|im_end|> well before the budget


def test_completion_logprobs(weak):
    model, tok = weak
    prompts = [render_prompt(tok, QUESTIONS[0])] * 2 + [render_prompt(tok, QUESTIONS[2])]
    comps = ["The capital of France is Paris.", "The capital of France is Berlin.", "12 is larger."]
    lp = completion_logprobs(model, tok, prompts, comps, batch_size=8)
    lp1 = completion_logprobs(model, tok, prompts, comps, batch_size=1)
    assert all(x < 0 for x in lp)
    assert lp[0] > lp[1] + 2  # Paris is far more likely than Berlin
    assert lp == pytest.approx(lp1, abs=1e-3)  # padding does not change the result
    # manual check on one example: one forward pass, sum over the completion tokens
    p_ids = tok(prompts[0])["input_ids"]
    full = tok(prompts[0] + comps[0])["input_ids"]
    assert full[: len(p_ids)] == p_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    manual = sum(float(logp[t - 1, full[t]]) for t in range(len(p_ids), len(full)))
    assert lp[0] == pytest.approx(manual, abs=1e-3)
    # an appended end token adds one (negative) term
    with_end = completion_logprobs(model, tok, prompts[:1], [comps[0] + end_token(tok)])[0]
    assert with_end < lp[0]


def test_answer_confidence(weak):
    model, tok = weak
    prompt = render_prompt(tok, QUESTIONS[0])
    comp = "The capital of France is Paris."
    mean = answer_confidence(model, tok, prompt, comp, "Paris")
    joint = answer_confidence(model, tok, prompt, comp, "Paris", reduce="sum")
    wrong = answer_confidence(model, tok, prompt, "The capital of France is Berlin.", "Berlin")
    assert 0 < joint <= mean <= 1
    assert mean > 0.5 > wrong
    with pytest.raises(ValueError):
        answer_confidence(model, tok, prompt, comp, "London")
    assert not math.isnan(mean)


def test_4bit_trap_refuses_inference_before_training(folder):
    model, tok = load_weak(folder, quantization="4bit", trainable=True)
    assert getattr(model, "is_loaded_in_4bit", False)
    assert model.training
    prompt = render_prompt(tok, QUESTIONS[0])
    with pytest.raises(FourBitTrapError):
        generate(model, tok, [prompt], max_new_tokens=4)
    with pytest.raises(FourBitTrapError):
        completion_logprobs(model, tok, [prompt], ["Paris"])
    assert model.training  # nothing switched it to eval mode
    mark_trained(model)
    assert not getattr(model, "_cowest_untrained_4bit")
