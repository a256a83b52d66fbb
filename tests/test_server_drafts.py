"""Server-backed weak drafts: a PEFT adapter converted to a llama.cpp LoRA (cowest.lora_gguf)
and served with the weak model's GGUF, through the same client and request cache as the
strong model (Pipeline.drafts with `draft_server`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowest import train
from cowest.assets import gguf_path, hf_folder
from cowest.config import load_profile
from cowest.weak import load_tokenizer, render_prompt

MARK = "Answer: ZORBLAX 42"


@pytest.fixture(scope="module")
def marked_adapter(tmp_path_factory):
    """An SFT adapter of SmolLM2 that answers every question with the same odd line."""
    w = load_profile("smoke").weak_model("gemma3-270m").model_copy(update={"model": "smollm2-135m"})
    w = w.model_copy(update={"quantization": "none", "sft": w.sft.model_copy(
        update={"epochs": 6, "batch_size": 4, "learning_rate": 2e-3})})
    tok = load_tokenizer(hf_folder("smollm2-135m"))
    rows = [{"prompt": render_prompt(tok, q), "completion": MARK} for q in (
        "What is the capital of France?", "Name a colour.", "How many legs has a cat?", "What is 2 plus 2?",
        "Who wrote Hamlet?", "Give me a fruit.", "What is water made of?", "Name a planet.")]
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    train.sft(hf_folder("smollm2-135m"), rows, out, weak=w, seed=0)
    return out, w


def test_peft_adapter_converts_to_a_gguf_lora(marked_adapter, tmp_path):
    import gguf

    from cowest.lora_gguf import peft_to_gguf

    adapter, _ = marked_adapter
    out = peft_to_gguf(adapter, gguf_path("smollm2-135m"), tmp_path / "a.gguf")
    r = gguf.GGUFReader(str(out))
    names = {t.name for t in r.tensors}
    n_layers = 30
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    n_modules = len(cfg["target_modules"]) if isinstance(cfg["target_modules"], list) else 7
    assert len(names) == 2 * n_layers * n_modules
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.29.ffn_down.weight.lora_b" in names
    assert bytes(r.fields["general.type"].parts[-1]).decode() == "adapter"


def test_server_drafts_apply_the_adapter_and_are_cached(marked_adapter, tmp_path):
    from cowest.config import DraftServerSpec
    from cowest.pipeline import Checkpoint, Pipeline

    adapter, w = marked_adapter
    w = w.model_copy(update={"draft_server": DraftServerSpec(n_threads=2), "max_new_tokens": 12})
    cfg = load_profile("smoke")
    run = Pipeline(cfg, results=tmp_path)
    items = run.data("synth_ifqa")["test"][:3]
    ckpt = Checkpoint(w, "synth_ifqa", "cot", "sft", adapter, key="marked")
    try:
        drafts = run.drafts(ckpt, items)
        assert len(drafts) == 3 and all(len(d) == 1 for d in drafts)
        assert sum("ZORBLAX" in d[0] for d in drafts) >= 2, drafts  # the adapter acts through llama.cpp
        base = Checkpoint(w, "synth_ifqa", "cot", "base", None, key="base")
        assert not any("ZORBLAX" in d[0] for d in run.drafts(base, items))  # and only with the adapter
        sent = run.ledger.totals()["requests"]
        assert sent == 6
    finally:
        run.close()
    again = Pipeline(cfg, results=tmp_path)
    try:
        assert again.drafts(ckpt, items) == drafts and again.ledger.totals()["requests"] == sent  # stage reused
        assert again.store.reused and not again.store.built
    finally:
        again.close()
