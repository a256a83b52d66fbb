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
    return load_weak(folder, quantization="none")


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
    a = generate(model, tok, prompts, max_new_tokens=12, batch_size=8, num_samples=2, seed=0)
    b = generate(model, tok, prompts, max_new_tokens=12, batch_size=8, seed=0)
    one = [generate(model, tok, [p], max_new_tokens=12, batch_size=1, seed=0)[0] for p in prompts]
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
    out = generate(model, tok, [render_prompt(tok, "Reply with the single word: yes")], max_new_tokens=48,
                   batch_size=1, seed=0)
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
        generate(model, tok, [prompt], max_new_tokens=4, batch_size=1, seed=0)
    with pytest.raises(FourBitTrapError):
        completion_logprobs(model, tok, [prompt], ["Paris"])
    assert model.training  # nothing switched it to eval mode
    mark_trained(model)
    assert not getattr(model, "_cowest_untrained_4bit")


# ----------------------------------------------------------------------------- merged adapters
@pytest.fixture(scope="module")
def adapter_dir(folder, tmp_path_factory):
    """A LoRA adapter with non-zero weights (LoRA B starts at zero), saved like cowest.train saves one."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_weak(folder, quantization="none")
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.03)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_inference_adapter_is_merged_with_identical_outputs(folder, weak, adapter_dir):
    from peft import PeftModel

    merged, tok = load_weak(folder, quantization="none", adapter=adapter_dir)
    unmerged, _ = load_weak(folder, quantization="none", adapter=adapter_dir, merge=False)
    base, _ = weak
    # merged: plain weights, no LoRA layers left; frozen and in eval mode like any inference model
    assert not isinstance(merged, PeftModel) and not any("lora" in n for n, _ in merged.named_modules())
    assert not merged.training and all(not p.requires_grad for p in merged.parameters())
    assert isinstance(unmerged, PeftModel) and list(unmerged.peft_config) == ["default"]

    prompts = [render_prompt(tok, q) for q in QUESTIONS] + [render_prompt(tok, "Write a haiku about rain.")]
    kw = dict(max_new_tokens=24, batch_size=4, seed=0)
    out_merged = generate(merged, tok, prompts, **kw)
    out_unmerged = generate(unmerged, tok, prompts, **kw)
    assert out_merged == out_unmerged  # the same greedy strings
    # the adapter matters: the scores move away from the base model's, identically with and without merging
    comps = [o[0] for o in out_merged]
    lp_merged = completion_logprobs(merged, tok, prompts, comps)
    lp_unmerged = completion_logprobs(unmerged, tok, prompts, comps)
    lp_base = completion_logprobs(base, tok, prompts, comps)
    assert lp_merged == pytest.approx(lp_unmerged, abs=1e-3)
    assert max(abs(a - b) for a, b in zip(lp_merged, lp_base)) > 0.3


def test_trainable_and_4bit_adapters_are_not_merged(folder, adapter_dir):
    from peft import PeftModel

    trainable, _ = load_weak(folder, quantization="none", adapter=adapter_dir, trainable=True)
    assert isinstance(trainable, PeftModel) and trainable.training
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)
    four_bit, _ = load_weak(folder, quantization="4bit", adapter=adapter_dir)
    assert isinstance(four_bit, PeftModel) and getattr(four_bit, "is_loaded_in_4bit", False)
    assert any("lora" in n for n, _ in four_bit.named_modules())
