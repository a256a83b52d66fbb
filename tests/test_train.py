"""Training over TRL: LoRA SFT, 4-bit QLoRA SFT, DPO with the SFT policy as reference.

A few optimizer steps each on tiny data written here, on SmolLM2-135M-Instruct, offline.
Torch threads: COWEST_TEST_THREADS (default 1, see tests/test_weak.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from cowest.assets import hf_folder
from cowest.stages import read_json
from cowest.train import dpo, sft
from cowest.weak import completion_logprobs, end_token, generate, load_tokenizer, load_weak, render_prompt

torch.set_num_threads(int(os.environ.get("COWEST_TEST_THREADS", "1")))

SYSTEM = "Be brief."
FACTS = [
    ("What does zorvex treat?", "Zorvex treats migraine."),
    ("What does plimtar treat?", "Plimtar treats asthma."),
]
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}


@pytest.fixture(scope="module")
def folder() -> Path:
    return hf_folder("smollm2-135m")


@pytest.fixture(scope="module")
def tok(folder):
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def rows(tok) -> list[dict[str, str]]:
    return [{"prompt": render_prompt(tok, q, system=SYSTEM), "completion": c} for q, c in FACTS] * 4


@pytest.fixture(scope="module")
def sft_run(folder, rows, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft") / "adapter"
    log = sft(folder, rows, out, lora=LORA, epochs=3, learning_rate=3e-3, batch_size=4, logging_steps=1, seed=0)
    return out, log


def _losses(log: dict) -> list[float]:
    return [h["loss"] for h in log["log_history"] if "loss" in h]


def test_sft_lora_learns_and_saves(folder, tok, rows, sft_run):
    out, log = sft_run
    losses = _losses(log)
    assert log["global_step"] == 6 and len(losses) == 6
    assert losses[0] > losses[-1] and losses[-1] < 0.5 * losses[0]
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert (out / "tokenizer_config.json").exists()
    assert not (out / "_trainer").exists() and not (out / "ref").exists()
    saved = read_json(out / "train_log.json")
    assert saved["method"] == "sft" and saved["eos_token"] == "<|im_end|>"
    assert saved["log_history"] == log["log_history"]

    model, tok2 = load_weak(folder, adapter=out)
    base, _ = load_weak(folder)
    prompts = [r["prompt"] for r in rows[:2]]
    targets = [r["completion"] for r in rows[:2]]
    # the memorised answer, greedy, and generation stopped at the learned <|im_end|>
    assert [o[0] for o in generate(model, tok2, prompts, max_new_tokens=24)] == targets
    tuned = completion_logprobs(model, tok2, prompts, [t + end_token(tok2) for t in targets])
    before = completion_logprobs(base, tok, prompts, [t + end_token(tok) for t in targets])
    assert all(a > b + 5 for a, b in zip(tuned, before))


def test_sft_qlora_4bit_learns(folder, rows, tmp_path):
    log = sft(folder, rows, tmp_path / "qlora", lora=LORA, quantization="4bit", epochs=2, learning_rate=3e-3,
              batch_size=4, logging_steps=1)
    losses = _losses(log)
    assert log["quantization"] == "4bit" and len(losses) == 4
    assert losses[0] > losses[-1] and losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "qlora" / "adapter_model.safetensors").exists()


def test_dpo_reference_is_sft_policy(folder, tok, sft_run, tmp_path):
    sft_dir, _ = sft_run
    end = end_token(tok)
    # preferences that contradict what SFT memorised, so DPO has something to move
    pairs = [
        {"prompt": render_prompt(tok, FACTS[0][0], system=SYSTEM), "chosen": "Zorvex treats asthma.",
         "rejected": "Zorvex treats migraine."},
        {"prompt": render_prompt(tok, FACTS[1][0], system=SYSTEM), "chosen": "Plimtar treats migraine.",
         "rejected": "Plimtar treats asthma."},
    ] * 2
    prompts = [p["prompt"] for p in pairs[:2]]
    chosen = [p["chosen"] + end for p in pairs[:2]]
    rejected = [p["rejected"] + end for p in pairs[:2]]

    sft_model, _ = load_weak(folder, adapter=sft_dir)
    base_model, _ = load_weak(folder)
    sft_c, sft_r = (completion_logprobs(sft_model, tok, prompts, x) for x in (chosen, rejected))
    base_c, base_r = (completion_logprobs(base_model, tok, prompts, x) for x in (chosen, rejected))
    seen: dict = {}

    def reference_logps(trainer) -> list[float]:
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        c, r = trainer.compute_ref_log_probs(trainer.model, batch)
        return c.tolist() + r.tolist()

    def inspect(trainer) -> None:
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        assert set(peft_model.peft_config) == {"default", "ref"}
        assert peft_model.active_adapter == "default"
        assert all(not p.requires_grad for n, p in peft_model.named_parameters() if ".ref." in n)
        assert trainer.train_dataset[0]["chosen"].endswith(end)  # TRL appended the end token
        seen["trainer"] = trainer
        seen["ref_before"] = reference_logps(trainer)

    log = dpo(folder, sft_dir, pairs, tmp_path / "dpo", learning_rate=5e-4, epochs=2, batch_size=2,
              logging_steps=1, on_trainer=inspect)

    ref = seen["ref_before"]
    # the reference is the SFT policy ...
    assert ref == pytest.approx(sft_c + sft_r, abs=2e-3)
    # ... and not the base model (which is what TRL uses when given a fresh peft_config)
    assert max(abs(a - b) for a, b in zip(ref, base_c + base_r)) > 1.0
    # the reference stayed frozen through training
    assert reference_logps(seen["trainer"]) == pytest.approx(ref, abs=2e-3)

    assert log["global_step"] == 4
    hist = [h for h in log["log_history"] if "loss" in h]
    assert all("rewards/margins" in h and "rewards/accuracies" in h for h in hist)
    assert hist[-1]["rewards/margins"] > 0
    saved = read_json(tmp_path / "dpo" / "train_log.json")
    assert saved["method"] == "dpo" and saved["log_history"] == log["log_history"]
    assert not (tmp_path / "dpo" / "ref").exists()

    aligned, _ = load_weak(folder, adapter=tmp_path / "dpo")
    al_c, al_r = (completion_logprobs(aligned, tok, prompts, x) for x in (chosen, rejected))
    for i in range(2):
        assert al_c[i] - al_r[i] > sft_c[i] - sft_r[i]
