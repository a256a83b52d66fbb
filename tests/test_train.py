"""Training over TRL: the profile's specs reach TRL/peft; LoRA SFT, 4-bit QLoRA SFT, DPO.

The first tests build the TRL/peft configs from a WeakSpec without any model and check that
every field of TrainSpec/DPOSpec/LoraSpec reaches them. The others run a few optimizer steps
each on tiny data written here, on SmolLM2-135M-Instruct, offline.
Torch threads: COWEST_TEST_THREADS (default 1, see tests/test_weak.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path
from typing import Any

import pytest
import torch

from cowest import train
from cowest.assets import hf_folder
from cowest.config import DPOSpec, LoraSpec, TrainSpec, WeakSpec, load_profile
from cowest.artifacts import read_json
from cowest.train import dpo, dpo_config, lora_config, sft, sft_config
from cowest.weak import completion_logprobs, end_token, generate, load_tokenizer, load_weak, render_prompt

torch.set_num_threads(int(os.environ.get("COWEST_TEST_THREADS", "1")))

SYSTEM = "Be brief."
FACTS = [
    ("What does zorvex treat?", "Zorvex treats migraine."),
    ("What does plimtar treat?", "Plimtar treats asthma."),
]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------- spec helpers
def _fields(spec_cls: type) -> list[str]:
    """Field names of a config class, pydantic model or dataclass."""
    if hasattr(spec_cls, "model_fields"):
        return list(spec_cls.model_fields)
    return [f.name for f in dataclasses.fields(spec_cls)]


def _replace(spec: Any, **changes: Any) -> Any:
    """A copy of a config spec with some fields changed (pydantic or dataclass)."""
    if hasattr(spec, "model_copy"):
        return spec.model_copy(update=changes)
    return dataclasses.replace(spec, **changes)


def _dump(spec: Any) -> dict[str, Any]:
    return spec.model_dump() if hasattr(spec, "model_dump") else dataclasses.asdict(spec)


def _weak(*, quantization: str = "none", sft: dict | None = None, dpo: dict | None = None) -> WeakSpec:
    """The smoke profile's SmolLM2 weak model with the training settings of these tests."""
    base = load_profile("smoke").weak_model("smollm2-135m")
    lora = LoraSpec(r=8, alpha=16, dropout=0.0, target_modules=ALL_LINEAR)
    return _replace(
        base, quantization=quantization, lora=lora,
        sft=_replace(base.sft, grad_accum=1, max_length=512, **(sft or {})),
        dpo=_replace(base.dpo, grad_accum=1, max_length=512, beta=0.1, loss_type="sigmoid", **(dpo or {})),
    )


# ----------------------------------------------------------------------------- spec -> TRL/peft, no model
# Where each field of the profile's weak-model specs goes. A field added to TrainSpec, DPOSpec,
# LoraSpec or WeakSpec fails test_every_spec_field_is_wired until it is wired and listed here.
TRAIN_TO_TRL = {  # TrainSpec field -> SFTConfig attribute (DPOSpec: the same, -> DPOConfig)
    "epochs": "num_train_epochs",
    "learning_rate": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "max_length": "max_length",
    "trl": None,  # each key -> the attribute of that name
}
DPO_TO_TRL = {**TRAIN_TO_TRL, "beta": "beta", "loss_type": "loss_type"}
LORA_TO_PEFT = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules"}
LORA_ELSEWHERE = {"dropout_sampler": "train.sft -> dropout.use_sparse_dropout (test_sft_with_the_sparse_dropout_sampler_learns)"}
WEAK_ELSEWHERE = {
    "name": "pipeline (run folders, tables); train's trl error messages",
    "model": "pipeline.Run.weak_base -> train.sft/dpo base_model, weak.load_weak",
    "sft": "train.sft_config (TRAIN_TO_TRL)",
    "dpo": "train.dpo_config (DPO_TO_TRL)",
    "lora": "train.lora_config (LORA_TO_PEFT)",
    "quantization": "train.sft/dpo and pipeline -> weak.load_weak(quantization=)",
    "max_new_tokens": "pipeline.Run.drafts -> weak.generate(max_new_tokens=)",
    "gen_batch_size": "pipeline.Run.drafts -> weak.generate(batch_size=)",
    "revision": "train.sft/dpo and pipeline -> weak.load_weak(revision=), weak.load_tokenizer(revision)",
    "draft_server": "pipeline.Pipeline._server_drafts (tests/test_server_drafts.py)",
}

# values that differ from the smoke profile's and from what this module or TRL would set alone
SFT_VALUES = {
    "epochs": 2.5, "learning_rate": 1.234e-4, "batch_size": 3, "grad_accum": 5, "max_length": 77,
    "trl": {"lr_scheduler_type": "cosine", "warmup_steps": 0.125, "logging_steps": 3, "optim": "adafactor",
            "save_strategy": "epoch", "weight_decay": 0.01},
}
DPO_VALUES = {
    "epochs": 1.5, "learning_rate": 4.321e-6, "batch_size": 5, "grad_accum": 3, "max_length": 99,
    "beta": 0.37, "loss_type": "ipo",
    "trl": {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 0.2, "logging_steps": 7,
            "max_grad_norm": 0.5},
}
LORA_VALUES = {"r": 5, "alpha": 11, "dropout": 0.07, "target_modules": ["q_proj", "v_proj"]}


def _norm(value: Any) -> Any:
    """Compare loosely typed config values: enums as str, one-element lists, sets."""
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(_norm(v) for v in value)
        return items[0] if len(items) == 1 and isinstance(value, (list, tuple)) else items
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):
        return value.value
    return value


def _assert_reaches(cfg: Any, base: Any, mapping: dict[str, str | None], values: dict[str, Any], what: str):
    for field, attr in mapping.items():
        pairs = values[field].items() if attr is None else [(attr, values[field])]
        for a, v in pairs:
            assert _norm(getattr(cfg, a)) == _norm(v), f"{what}.{field} does not reach {a}"
            assert _norm(getattr(base, a)) != _norm(v), f"{what}.{field}: test value {v!r} is not distinctive"


def test_every_spec_field_is_wired():
    for cls, mapping in [(TrainSpec, TRAIN_TO_TRL), (DPOSpec, DPO_TO_TRL), (LoraSpec, {**LORA_TO_PEFT, **LORA_ELSEWHERE}),
                         (WeakSpec, WEAK_ELSEWHERE)]:
        missing = [f for f in _fields(cls) if f not in mapping]
        assert not missing, f"new {cls.__name__} field(s) {missing}: wire them in cowest.train and list them here"
        assert set(mapping) == set(_fields(cls)), f"{cls.__name__} lost fields {set(mapping) - set(_fields(cls))}"
    assert set(SFT_VALUES) == set(TRAIN_TO_TRL) and set(DPO_VALUES) == set(DPO_TO_TRL)
    assert set(LORA_VALUES) == set(LORA_TO_PEFT)


def test_spec_fields_reach_trl_and_peft(tmp_path):
    from peft import LoraConfig
    from trl import DPOConfig, SFTConfig

    smoke = load_profile("smoke").weak
    weak = _replace(smoke, sft=_replace(smoke.sft, **SFT_VALUES), dpo=_replace(smoke.dpo, **DPO_VALUES),
                    lora=_replace(smoke.lora, **LORA_VALUES))
    # the smoke spec with no trl keys: what this module sets on its own
    plain = _replace(smoke, sft=_replace(smoke.sft, trl={}), dpo=_replace(smoke.dpo, trl={}))

    cfg = sft_config(weak, tmp_path / "sft", 123, "<|im_end|>")
    assert isinstance(cfg, SFTConfig)
    _assert_reaches(cfg, sft_config(plain, tmp_path / "p", 0, "</s>"), TRAIN_TO_TRL, SFT_VALUES, "sft")
    assert (cfg.output_dir, cfg.seed, cfg.data_seed, cfg.eos_token) == (str(tmp_path / "sft"), 123, 123, "<|im_end|>")
    assert cfg.completion_only_loss is True and cfg.packing is False
    assert cfg.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())  # off on a CPU

    cfg = dpo_config(weak, tmp_path / "dpo", 123)
    assert isinstance(cfg, DPOConfig)
    _assert_reaches(cfg, dpo_config(plain, tmp_path / "p", 0), DPO_TO_TRL, DPO_VALUES, "dpo")
    assert (cfg.output_dir, cfg.seed, cfg.data_seed) == (str(tmp_path / "dpo"), 123, 123)
    assert cfg.precompute_ref_log_probs is False

    lcfg = lora_config(weak.lora)
    assert isinstance(lcfg, LoraConfig)
    _assert_reaches(lcfg, lora_config(smoke.lora), LORA_TO_PEFT, LORA_VALUES, "lora")
    assert lcfg.task_type == "CAUSAL_LM" and lcfg.bias == "none"


def test_unknown_trl_key_fails_before_any_model(tmp_path, monkeypatch):
    smoke = load_profile("smoke").weak

    def no_loading(*a, **k):
        raise AssertionError("a model or tokenizer was loaded before the trl keys were checked")

    monkeypatch.setattr(train, "load_weak", no_loading)
    monkeypatch.setattr(train, "load_tokenizer", no_loading)
    bad_sft = _replace(smoke, sft=_replace(smoke.sft, trl={"warmup_steps": 0.1, "warmup_stepz": 0.1}))
    msg = f"weak_models.{smoke.name}.sft.trl: warmup_stepz is not a trl.SFTConfig field"
    with pytest.raises(ValueError, match=re.escape(msg)):
        sft_config(bad_sft, tmp_path / "w", 0, "</s>")
    with pytest.raises(ValueError, match=re.escape(msg)):
        sft("no-such-model", [{"prompt": "p", "completion": "c"}], tmp_path / "s", weak=bad_sft, seed=0)
    bad_dpo = _replace(smoke, dpo=_replace(smoke.dpo, trl={"betaa": 0.2}))
    msg = f"weak_models.{smoke.name}.dpo.trl: betaa is not a trl.DPOConfig field"
    with pytest.raises(ValueError, match=re.escape(msg)):
        dpo_config(bad_dpo, tmp_path / "w", 0)
    with pytest.raises(ValueError, match=re.escape(msg)):
        dpo("no-such-model", tmp_path / "a", [{"prompt": "p", "chosen": "c", "rejected": "r"}], tmp_path / "d",
            weak=bad_dpo, seed=0)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_training_takes_its_settings_from_the_spec_only():
    for fn in (sft, dpo):
        kw = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY]
        # the spec and the seed carry every setting; the rest say where to work, not how to train
        assert kw == ["weak", "seed", "on_trainer", "checkpoints", "commit"], fn.__name__
    assert not hasattr(train, "DEFAULT_LORA")


# ----------------------------------------------------------------------------- training
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
    weak = _weak(sft={"epochs": 3.0, "learning_rate": 3e-3, "batch_size": 4, "trl": {"logging_steps": 1}})
    log = sft(folder, rows, out, weak=weak, seed=0)
    return out, log, weak


def _losses(log: dict) -> list[float]:
    return [h["loss"] for h in log["log_history"] if "loss" in h]


def test_sft_lora_learns_and_saves(folder, tok, rows, sft_run):
    out, log, weak = sft_run
    losses = _losses(log)
    assert log["global_step"] == 6 and len(losses) == 6
    assert losses[0] > losses[-1] and losses[-1] < 0.5 * losses[0]
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert (out / "tokenizer_config.json").exists()
    assert not (out / "_trainer").exists() and not (out / "ref").exists()
    saved = read_json(out / "train_log.json")
    assert saved["method"] == "sft" and saved["eos_token"] == "<|im_end|>"
    assert saved["compact_lm_head"] is True  # trained through the compact LM head (on a CPU too)
    assert saved["log_history"] == log["log_history"]
    assert saved["weak"] == _dump(weak)  # the whole spec it was trained with
    assert set(read_json(out / "adapter_config.json")["target_modules"]) == set(ALL_LINEAR)

    model, tok2 = load_weak(folder, quantization="none", adapter=out)
    base, _ = load_weak(folder, quantization="none")
    prompts = [r["prompt"] for r in rows[:2]]
    targets = [r["completion"] for r in rows[:2]]
    # the memorised answer, greedy, and generation stopped at the learned <|im_end|>
    assert [o[0] for o in generate(model, tok2, prompts, max_new_tokens=24, batch_size=2, seed=0)] == targets
    tuned = completion_logprobs(model, tok2, prompts, [t + end_token(tok2) for t in targets])
    before = completion_logprobs(base, tok, prompts, [t + end_token(tok) for t in targets])
    assert all(a > b + 5 for a, b in zip(tuned, before))


def test_a_rendered_run_prints_no_logged_dicts(folder, rows, tmp_path, monkeypatch, capfd):
    """Under the runner the bar is off, and transformers' PrinterCallback, which takes its place,
    would print every logged dict into the rendered notebook; the steps go to on_log instead."""
    from cowest.notebooks import QUIET_ENV

    monkeypatch.setenv(QUIET_ENV, "1")
    weak = _weak(sft={"epochs": 1.0, "learning_rate": 3e-3, "batch_size": 4})  # logging_steps 5
    lines = []
    log = sft(folder, rows, tmp_path / "a", weak=weak, seed=0,
              on_trainer=lambda t: t.add_callback(train.progress_callback("sft", lines.append)))
    out = capfd.readouterr()
    # 2 steps: the first is logged (logging_first_step) and so is the last, though 2 is not a multiple of 5
    assert log["global_step"] == 2 and [h["step"] for h in log["log_history"] if "loss" in h] == [1, 2]
    assert [ln.split(",")[0] for ln in lines] == ["sft step 1/2", "sft step 2/2"]
    assert "grad_norm" not in out.out + out.err and "'loss'" not in out.out + out.err


def test_sft_with_the_sparse_dropout_sampler_learns(folder, rows, tmp_path):
    """lora.dropout_sampler: sparse puts cowest.dropout.SparseDropout in every LoRA layer (p > 0)
    of the SFT trainer's model, and the model learns as with nn.Dropout."""
    from cowest.dropout import SparseDropout

    weak = _weak(sft={"epochs": 3.0, "learning_rate": 3e-3, "batch_size": 4, "trl": {"logging_steps": 1}})
    weak = _replace(weak, lora=_replace(weak.lora, dropout=0.05, dropout_sampler="sparse"))
    seen = []
    log = sft(folder, rows, tmp_path / "sparse", weak=weak, seed=0,
              on_trainer=lambda t: seen.extend(m for m in t.model.modules() if isinstance(m, SparseDropout)))
    assert log["sparse_dropout_modules"] == len(seen) == 210 and all(m.p == 0.05 for m in seen)  # 30 layers x 7
    losses = _losses(log)
    assert losses[0] > losses[-1] and losses[-1] < 0.5 * losses[0]
    plain = sft(folder, rows[:4], tmp_path / "torch", weak=_replace(weak, lora=_replace(weak.lora, dropout_sampler="torch"),
                                                                    sft=_replace(weak.sft, epochs=1.0)), seed=0)
    assert plain["sparse_dropout_modules"] == 0


def test_sft_qlora_4bit_learns(folder, rows, tmp_path):
    weak = _weak(quantization="4bit",
                 sft={"epochs": 2.0, "learning_rate": 3e-3, "batch_size": 4, "trl": {"logging_steps": 1}})
    log = sft(folder, rows, tmp_path / "qlora", weak=weak, seed=0)
    losses = _losses(log)
    assert log["quantization"] == "4bit" and len(losses) == 4
    assert losses[0] > losses[-1] and losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "qlora" / "adapter_model.safetensors").exists()


def test_dpo_reference_is_sft_policy(folder, tok, sft_run, tmp_path):
    sft_dir, _, _ = sft_run
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

    sft_model, _ = load_weak(folder, quantization="none", adapter=sft_dir)
    base_model, _ = load_weak(folder, quantization="none")
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

    weak = _weak(dpo={"epochs": 2.0, "learning_rate": 5e-4, "batch_size": 2, "trl": {"logging_steps": 1}})
    log = dpo(folder, sft_dir, pairs, tmp_path / "dpo", weak=weak, seed=0, on_trainer=inspect)

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
    assert saved["weak"] == _dump(weak)
    assert not (tmp_path / "dpo" / "ref").exists()

    aligned, _ = load_weak(folder, quantization="none", adapter=tmp_path / "dpo")
    al_c, al_r = (completion_logprobs(aligned, tok, prompts, x) for x in (chosen, rejected))
    for i in range(2):
        assert al_c[i] - al_r[i] > sft_c[i] - sft_r[i]


# ----------------------------------------------------------------------------- compact LM head
# cowest.train makes TRL's fused LM head project only the scored (completion) positions on a
# CPU too, by flipping one TRL internal for the duration of a loss computation. These tests
# pin that internal and check, on real batches, that the compact path is exact.
TOL = dict(rtol=1e-5, atol=1e-5)


class _Stop(Exception):
    """Raised from on_trainer to end sft()/dpo() after the checks, before training."""


def test_compact_head_relies_on_pinned_trl_internals():
    import trl
    from trl import DPOTrainer, SFTTrainer
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    # the version this was written against, and the one pyproject.toml pins
    assert trl.__version__ == train.TRL_VERSION == "1.16.0"
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"trl==1.16.0"' in pyproject
    # the one decision it flips: add_fused_lm_head projects hidden_states[mask] only when
    # trl.trainer.utils._use_triton(device) is true (CUDA/XPU), every position otherwise
    assert train.compact_head_available()
    assert trl_utils._use_triton is chunked_logprob._use_triton
    src = inspect.getsource(trl_utils.add_fused_lm_head)
    assert "compact = _use_triton(hidden_states.device)" in src
    assert "hidden_states[mask] if compact" in src and "labels[mask] if compact" in src
    assert "masked_scatter(mask, x)" in src  # compact results are scattered back to (batch, seq-1), zeros elsewhere
    # the trainers score through the fused head in exactly the methods the subclasses wrap
    assert "fused_lm_head=True" in inspect.getsource(SFTTrainer.compute_loss)
    assert "add_fused_lm_head(" in inspect.getsource(SFTTrainer.__init__)
    assert "self._compute_loss(" in inspect.getsource(DPOTrainer.compute_loss)
    assert "fused_lm_head=True" in inspect.getsource(DPOTrainer._compute_loss)
    assert "fused_lm_head=True" in inspect.getsource(DPOTrainer.compute_ref_log_probs)
    assert issubclass(train.sft_trainer_class(), SFTTrainer) and issubclass(train.dpo_trainer_class(), DPOTrainer)

    cpu = torch.device("cpu")
    original = trl_utils._use_triton
    assert original(cpu) is False  # TRL alone: the full path on a CPU
    with train.compact_lm_head() as on:
        assert on is True and trl_utils._use_triton(cpu) is True
        assert chunked_logprob._use_triton(cpu) is False  # the kernel still folds its tiles in torch
    assert trl_utils._use_triton is original
    with train.compact_lm_head(False) as on:
        assert on is False and trl_utils._use_triton is original
    with pytest.raises(RuntimeError), train.compact_lm_head():
        raise RuntimeError("restored on error too")
    assert trl_utils._use_triton is original


class _RowCounter:
    """Counts the rows TRL's chunked log-prob kernel projects through the LM head."""

    def __init__(self, monkeypatch):
        from trl.trainer import utils as trl_utils

        self.rows: list[int] = []
        apply = trl_utils._ChunkedLogProbFunction.apply

        def counting(hidden, *a, **k):
            self.rows.append(hidden.shape[0])
            return apply(hidden, *a, **k)

        monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)

    def take(self) -> list[int]:
        rows, self.rows = self.rows, []
        return rows


def _perturb_lora_b(model, adapter: str = "default", seed: int = 0) -> None:
    """LoRA B starts at zero: give the trained adapter non-zero weights so it matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n and f".{adapter}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _loss_and_grads(trainer, batch, compact: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    trainer.compact_lm_head = compact
    trainer._metrics["train"].clear()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    trainer.model.zero_grad(set_to_none=True)
    return loss.detach(), grads, metrics


def _assert_same_grads(full: dict, compact: dict) -> None:
    assert full and set(full) == set(compact)
    assert any(g.abs().max() > 0 for g in full.values())
    for name in full:
        assert torch.allclose(full[name], compact[name], **TOL), name


def test_sft_compact_head_is_exact(folder, tok, rows, tmp_path, monkeypatch):
    """Loss, per-sequence summed log-probs, gradients and logged metrics: compact == full."""
    counter = _RowCounter(monkeypatch)
    long_row = {"prompt": render_prompt(tok, "Explain in two sentences why the sky is blue.", system=SYSTEM),
                "completion": "Sunlight scatters off air molecules. Blue light scatters the most."}
    data = rows[:3] + [long_row]  # prompts and completions of different lengths: padding inside the batch
    seen: dict = {}

    def check(trainer):
        assert type(trainer).__name__ == "CompactSFTTrainer" and trainer.compact_lm_head is True
        model = trainer.model
        _perturb_lora_b(model)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
        labels = batch["labels"]
        n_scored = int((labels[:, 1:] != -100).sum())
        assert n_scored < labels[:, 1:].numel() // 2  # most positions are prompt or padding

        per_seq = {}
        for compact in (False, True):
            with torch.no_grad(), train.compact_lm_head(compact):
                out = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=labels, fused_lm_head=True)
            per_seq[compact] = out.log_probs.sum(dim=1)
        # the compact path projects only the scored positions; the full path every position
        assert counter.take() == [labels[:, 1:].numel(), n_scored]
        full_loss, full_grads, full_metrics = _loss_and_grads(trainer, batch, compact=False)
        assert counter.take() == [labels[:, 1:].numel()]
        comp_loss, comp_grads, comp_metrics = _loss_and_grads(trainer, batch, compact=True)
        assert counter.take() == [n_scored]

        assert torch.allclose(per_seq[True], per_seq[False], **TOL)
        assert (per_seq[False] < 0).all()
        # the loss is the mean negative log-prob over the scored tokens
        assert torch.allclose(full_loss, -per_seq[False].sum() / n_scored, **TOL)
        assert torch.allclose(comp_loss, full_loss, **TOL)
        _assert_same_grads(full_grads, comp_grads)
        assert set(full_metrics) == set(comp_metrics) >= {"entropy", "mean_token_accuracy"}
        assert comp_metrics == pytest.approx(full_metrics, rel=1e-5, abs=1e-6)
        seen["ok"] = True
        raise _Stop

    weak = _weak(sft={"batch_size": 4})
    with pytest.raises(_Stop):
        sft(folder, data, tmp_path / "sft", weak=weak, seed=0, on_trainer=check)
    assert seen == {"ok": True} and not (tmp_path / "sft").exists()


def test_dpo_compact_head_is_exact(folder, tok, sft_run, tmp_path, monkeypatch):
    """Chosen/rejected log-probs (policy and reference), loss, gradients, DPO metrics: compact == full."""
    sft_dir, _, _ = sft_run
    counter = _RowCounter(monkeypatch)
    pairs = [
        {"prompt": render_prompt(tok, FACTS[0][0], system=SYSTEM), "chosen": "Zorvex treats asthma.",
         "rejected": "Zorvex treats migraine, as the label says in its first line."},
        {"prompt": render_prompt(tok, "Name a planet with rings, and say which one is the largest.", system=SYSTEM),
         "chosen": "Saturn has rings.", "rejected": "Mars."},
    ]
    seen: dict = {}

    def check(trainer):
        assert type(trainer).__name__ == "CompactDPOTrainer" and trainer.compact_lm_head is True
        model = trainer.model
        _perturb_lora_b(model, "default")  # the policy now differs from the reference ("ref", the SFT adapter)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)  # as TRL builds them
        n_scored = int((labels[:, 1:] != -100).sum())
        model_kwargs = {k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps",
                                                                      "ref_rejected_logps")}
        policy, ref = {}, {}
        for compact in (False, True):
            with torch.no_grad(), train.compact_lm_head(compact):
                out = model(**model_kwargs, labels=labels, fused_lm_head=True, use_cache=False)
            policy[compact] = out.log_probs.sum(dim=1)  # [chosen..., rejected...]
            trainer.compact_lm_head = compact
            ref[compact] = torch.cat(trainer.compute_ref_log_probs(model, batch))
        assert counter.take() == [labels[:, 1:].numel()] * 2 + [n_scored] * 2  # policy, reference; per mode
        full_loss, full_grads, full_metrics = _loss_and_grads(trainer, batch, compact=False)
        assert counter.take() == [labels[:, 1:].numel()] * 2  # policy and reference forward
        comp_loss, comp_grads, comp_metrics = _loss_and_grads(trainer, batch, compact=True)
        assert counter.take() == [n_scored] * 2

        assert torch.allclose(policy[True], policy[False], **TOL)
        assert torch.allclose(ref[True], ref[False], **TOL)
        assert (policy[False] - ref[False]).abs().max() > 1e-2  # the loss is not the trivial log(2)
        assert torch.allclose(comp_loss, full_loss, **TOL)
        _assert_same_grads(full_grads, comp_grads)
        assert not any(".ref." in n for n in full_grads)  # the reference adapter gets no gradient
        # the metrics TRL logs (the notebooks read rewards/margins and rewards/accuracies)
        for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
                    "logps/rejected", "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy"):
            assert key in full_metrics and key in comp_metrics, key
        assert set(full_metrics) == set(comp_metrics)
        assert comp_metrics == pytest.approx(full_metrics, rel=1e-5, abs=1e-5)
        # logps/* are the means of the per-sequence sums checked above
        chosen, rejected = policy[False].chunk(2)
        assert full_metrics["logps/chosen"] == pytest.approx(float(chosen.mean()), rel=1e-5)
        assert full_metrics["logps/rejected"] == pytest.approx(float(rejected.mean()), rel=1e-5)
        beta = trainer.beta
        margins = beta * ((chosen - ref[False].chunk(2)[0]) - (rejected - ref[False].chunk(2)[1]))
        assert full_metrics["rewards/margins"] == pytest.approx(float(margins.mean()), rel=1e-4, abs=1e-6)
        seen["ok"] = True
        raise _Stop

    weak = _weak(dpo={"batch_size": 2})
    with pytest.raises(_Stop):
        dpo(folder, sft_dir, pairs, tmp_path / "dpo", weak=weak, seed=0, on_trainer=check)
    assert seen == {"ok": True} and not (tmp_path / "dpo").exists()


def test_lora_covers_every_linear_layer_by_default_for_every_weak_model():
    """Fair weak-model ablation: the same LoRA coverage for every architecture unless a
    profile says otherwise."""
    from cowest.config import LoraSpec, load_profile
    from cowest.train import lora_config

    assert lora_config(LoraSpec()).target_modules == "all-linear"
    for name in ("smoke", "tiny", "paper"):
        for w in load_profile(name).weak_models:
            assert w.lora.target_modules == "all-linear", (name, w.name)
    assert set(lora_config(LoraSpec(target_modules=["q_proj"])).target_modules) == {"q_proj"}


def test_sft_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path):
    """Long training survives a crash: kill an SFT after its second checkpoint, rerun, and it
    resumes there (TRL's checkpoints, through the profile's `trl:` pass-through)."""
    import signal
    import subprocess
    import sys
    import time

    driver = Path(__file__).parent / "resume_driver.py"
    out, ckpts = tmp_path / "adapter", tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, str(driver), str(out), str(ckpts)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not (ckpts / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        assert time.time() < deadline, "no second checkpoint in 10 minutes"
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint's files land
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing half-written where the adapter belongs
    done = subprocess.run([sys.executable, str(driver), str(out), str(ckpts)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    resumed = done.stdout.split("RESUMED_FROM")[1].split()
    assert resumed[0].startswith("checkpoint-") and int(resumed[0].split("-")[1]) >= 2
    assert resumed[2] == "6"  # the run finished all its steps
    assert (out / "adapter_model.safetensors").exists() and not ckpts.exists()  # checkpoints cleaned up
    log = json.loads((out / "train_log.json").read_text())
    assert log["resumed_from"] == resumed[0]


def test_accelerate_launch_builds_the_stage_the_notebooks_reuse(tmp_path):
    """The multi-GPU path, run here on the CPU with one process: `accelerate launch -m
    cowest.stage sft` trains one SFT step into the same stage folder a notebook asks for."""
    import shutil
    import subprocess
    import sys

    from cowest.config import load_profile
    from cowest.pipeline import Pipeline

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COWEST_RESULTS": str(tmp_path)}
    out = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "cowest.stage", "sft", "--profile", "smoke", "--task", "synth_ifqa"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "sft stage ready" in out.stdout
    run = Pipeline(load_profile("smoke"), results=tmp_path)
    try:
        ckpt = run.sft("synth_ifqa")  # the same key: reused, not trained again
        assert run.store.built == [] and ("sft", ckpt.adapter.parent.name) in run.store.reused
        assert json.loads((ckpt.adapter / "train_log.json").read_text())["global_step"] == 1
    finally:
        run.close()


def test_rendered_notebooks_get_no_progress_bar_and_the_runner_gets_one_line_per_logged_step(tmp_path, monkeypatch):
    """Under the runner (COWEST_QUIET) the trainer's bar would be HTML in the rendered notebook;
    instead each logged step becomes a journal line that the runner prints in the terminal."""
    from types import SimpleNamespace

    from cowest.notebooks import QUIET_ENV

    smoke = load_profile("smoke").weak
    monkeypatch.delenv(QUIET_ENV, raising=False)
    assert sft_config(smoke, tmp_path / "a", 0, "</s>").disable_tqdm is False  # JupyterLab: the bar stays
    monkeypatch.setenv(QUIET_ENV, "1")
    assert sft_config(smoke, tmp_path / "b", 0, "</s>").disable_tqdm is True
    assert dpo_config(smoke, tmp_path / "c", 0).disable_tqdm is True

    lines = []
    cb = train.progress_callback("sft", lines.append)
    state = SimpleNamespace(global_step=20, max_steps=96)
    cb.on_log(None, state, None, logs={"loss": 0.51234, "learning_rate": 1e-3})
    cb.on_log(None, state, None, logs={"train_runtime": 3.0})  # the final summary is not a step
    assert lines == ["sft step 20/96, loss 0.512"]
