"""Training the weak model over TRL 1.16: one function per method (SFT, DPO).

* :func:`sft` fine-tunes a LoRA adapter on prompt-completion rows with TRL's
  ``SFTTrainer``. The loss is on the completion only (``completion_only_loss=True``);
  TRL appends ``SFTConfig.eos_token`` to every completion that does not already end with
  it, and we set that to the model's end-of-turn token (:func:`cowest.weak.end_token`,
  e.g. ``<|im_end|>``), so the trained model ends its drafts the way generation stops.
* :func:`dpo` aligns the SFT adapter with TRL's ``DPOTrainer`` on preference triples. It
  starts from a ``PeftModel`` that holds the SFT adapter (named ``"default"``, trainable)
  and passes no ``peft_config``: TRL 1.16 then adds a second adapter named ``"ref"``
  (``model.add_adapter("ref", model.peft_config["default"])``) and copies the SFT weights
  into it; reference log-probs are computed with ``use_adapter(model, "ref")``. The
  reference policy is therefore the SFT model, not the base model (which is what TRL would
  use with a fresh ``peft_config``). :func:`dpo` checks that the ``"ref"`` adapter exists
  and equals the SFT adapter before training, and fails otherwise.

Both functions load the model fresh and in train mode, and never run inference before
training (the CPU 4-bit trap, see :mod:`cowest.weak`). They save only the final adapter
and the tokenizer into ``out_dir`` (atomically, via :func:`cowest.stages.atomic_dir`),
plus ``train_log.json``; no intermediate checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cowest.stages import atomic_dir, write_json
from cowest.weak import Quantization, end_token, load_weak, mark_trained

logger = logging.getLogger(__name__)

#: Default LoRA settings (the project's profiles override them).
DEFAULT_LORA: dict[str, Any] = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def _on_cuda() -> bool:
    return torch.cuda.is_available()


def _common_args(
    *,
    output_dir: Path,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    grad_accum: int,
    max_length: int,
    seed: int,
    logging_steps: int,
    bf16: bool | None,
) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO (CPU-friendly where there is no GPU)."""
    cuda = _on_cuda()
    if bf16 is None:  # bf16 mixed precision on a capable GPU; exact float32 on a CPU
        bf16 = cuda and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": epochs,
        "learning_rate": learning_rate,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "max_length": max_length,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": logging_steps,
        "logging_first_step": True,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": bf16,
        "fp16": False,
        # checkpointing saves memory for an 8B model on a GPU; on a CPU it only costs time
        "activation_checkpointing": cuda,  # transformers 5 name of gradient_checkpointing
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
        "disable_tqdm": False,
    }


def _lora_config(lora: dict[str, Any]) -> Any:
    from peft import LoraConfig

    cfg = {**DEFAULT_LORA, **lora}
    return LoraConfig(
        r=int(cfg["r"]),
        lora_alpha=int(cfg["alpha"]),
        lora_dropout=float(cfg["dropout"]),
        target_modules=list(cfg["target_modules"]),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _summary(trainer: Any, method: str, runtime: float, extra: dict[str, Any]) -> dict[str, Any]:
    state = trainer.state
    steps = [h for h in state.log_history if "loss" in h]
    return {
        "method": method,
        "global_step": state.global_step,
        "epochs": state.epoch,
        "runtime_s": round(runtime, 2),
        "seconds_per_step": round(runtime / max(state.global_step, 1), 3),
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        **extra,
        "log_history": state.log_history,
    }


def _count_too_long(tokenizer: Any, texts: list[str], max_length: int) -> int:
    """How many prompt+completion texts exceed max_length tokens once the end token is added.

    TRL truncates those from the right (``truncation_mode="keep_start"``), which cuts the
    end of the completion and its end token: the model then never learns to stop there.
    """
    n = sum(1 for t in texts if len(tokenizer(t)["input_ids"]) + 1 > max_length)
    if n:
        logger.warning("%d of %d training sequences exceed max_length=%d and will be truncated",
                       n, len(texts), max_length)
    return n


def _save(trainer: Any, tokenizer: Any, folder: Path, log: dict[str, Any]) -> None:
    trainer.model.save_pretrained(str(folder), selected_adapters=["default"])
    tokenizer.save_pretrained(str(folder))
    write_json(folder / "train_log.json", log)


def sft(
    base_model: str | Path,
    rows: list[dict[str, str]],
    out_dir: Path,
    *,
    lora: dict[str, Any],
    quantization: Quantization = "none",
    epochs: float,
    learning_rate: float,
    batch_size: int,
    grad_accum: int = 1,
    max_length: int = 512,
    seed: int = 0,
    logging_steps: int = 5,
    bf16: bool | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Supervised fine-tuning of a LoRA adapter; returns the training log (also saved).

    Args:
        base_model: folder or hub id of the weak model.
        rows: ``{"prompt": rendered prompt (cowest.weak.render_prompt), "completion": target}``.
            The end token is appended by TRL; loss on the completion tokens only.
        out_dir: receives ``adapter_model.safetensors``, ``adapter_config.json``, the
            tokenizer and ``train_log.json``; replaced atomically on success.
        lora: ``r``, ``alpha``, ``dropout``, ``target_modules`` (missing keys: DEFAULT_LORA).
        quantization: ``"4bit"`` trains QLoRA (NF4 base, ``prepare_model_for_kbit_training``).
        bf16: mixed precision; ``None`` = on for a bf16-capable GPU, off on a CPU.
        config_overrides: extra ``SFTConfig`` fields (e.g. ``warmup_ratio``, ``lr_scheduler_type``).
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("sft: no training rows")
    set_seed(seed)
    model, tok = load_weak(base_model, quantization=quantization, trainable=True)
    tok.padding_side = "right"
    eos = end_token(tok)
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    n_long = _count_too_long(tok, [r["prompt"] + r["completion"] for r in rows], max_length)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        work = tmp / "_trainer"
        cfg = _common_args(output_dir=work, epochs=epochs, learning_rate=learning_rate,
                           batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                           seed=seed, logging_steps=logging_steps, bf16=bf16)
        cfg.update({"completion_only_loss": True, "eos_token": eos, "packing": False})
        cfg.update(config_overrides or {})
        args = SFTConfig(**cfg)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=_lora_config(lora))
        t0 = time.perf_counter()
        trainer.train()
        runtime = time.perf_counter() - t0
        mark_trained(trainer.model)
        log = _summary(trainer, "sft", runtime, {
            "n_rows": len(rows), "n_truncated": n_long, "quantization": quantization, "eos_token": eos,
            "lora": {**DEFAULT_LORA, **lora}, "learning_rate": learning_rate, "batch_size": batch_size,
            "grad_accum": grad_accum, "max_length": max_length, "seed": seed,
            "base_model": str(base_model),
        })
        shutil.rmtree(work, ignore_errors=True)
        tok.padding_side = "left"
        _save(trainer, tok, tmp, log)
    return log


def _adapter_params(model: Any, name: str) -> dict[str, torch.Tensor]:
    tag = f".{name}."
    return {k.replace(tag, "."): p for k, p in model.named_parameters() if tag in k}


def dpo(
    base_model: str | Path,
    sft_adapter: Path,
    pairs: list[dict[str, str]],
    out_dir: Path,
    *,
    quantization: Quantization = "none",
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    learning_rate: float,
    epochs: float,
    batch_size: int,
    grad_accum: int = 1,
    max_length: int = 512,
    seed: int = 0,
    logging_steps: int = 5,
    bf16: bool | None = None,
    config_overrides: dict[str, Any] | None = None,
    on_trainer: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """DPO of the SFT adapter against itself as the reference; returns the log (also saved).

    Args:
        base_model: the model the SFT adapter was trained on.
        sft_adapter: the folder :func:`sft` wrote; it is trained further (as ``"default"``)
            and copied by TRL into the frozen reference adapter ``"ref"``.
        pairs: ``{"prompt": rendered prompt, "chosen": completion, "rejected": completion}``;
            TRL appends the end token to both completions.
        out_dir: the aligned adapter (loadable with ``load_weak(base_model, adapter=out_dir)``),
            the tokenizer and ``train_log.json`` (loss, rewards/margins, rewards/accuracies...).
        on_trainer: called with the ``DPOTrainer`` after construction and before training
            (tests use it to inspect the reference adapter).
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("dpo: no preference pairs")
    set_seed(seed)
    model, tok = load_weak(base_model, quantization=quantization, adapter=Path(sft_adapter), trainable=True)
    if list(model.peft_config) != ["default"]:
        raise RuntimeError(f"expected one adapter named 'default', got {list(model.peft_config)}")
    tok.padding_side = "right"
    tok.eos_token = end_token(tok)  # DPOTrainer appends tokenizer.eos_token to chosen/rejected
    data = Dataset.from_list(
        [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    )
    n_long = _count_too_long(
        tok, [p["prompt"] + c for p in pairs for c in (p["chosen"], p["rejected"])], max_length
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        work = tmp / "_trainer"
        cfg = _common_args(output_dir=work, epochs=epochs, learning_rate=learning_rate,
                           batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                           seed=seed, logging_steps=logging_steps, bf16=bf16)
        cfg.update({"beta": beta, "loss_type": loss_type, "precompute_ref_log_probs": False})
        cfg.update(config_overrides or {})
        args = DPOConfig(**cfg)
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        if "ref" not in peft_model.peft_config:
            raise RuntimeError("TRL did not create the 'ref' adapter: the DPO reference would be the base model")
        ref, cur = _adapter_params(peft_model, "ref"), _adapter_params(peft_model, "default")
        # (with a 4-bit base TRL casts the trainable adapter to bfloat16 after copying it)
        if set(ref) != set(cur) or any(
            not torch.equal(ref[k].detach().to(cur[k].dtype), cur[k].detach()) for k in cur
        ):
            raise RuntimeError("the 'ref' adapter is not a copy of the SFT adapter")
        for p in ref.values():
            p.requires_grad_(False)  # frozen: the optimizer must never touch the reference
        if on_trainer is not None:
            on_trainer(trainer)
        t0 = time.perf_counter()
        trainer.train()
        runtime = time.perf_counter() - t0
        mark_trained(trainer.model)
        log = _summary(trainer, "dpo", runtime, {
            "n_pairs": len(pairs), "n_truncated_sequences": n_long, "quantization": quantization, "beta": beta, "loss_type": loss_type,
            "learning_rate": learning_rate, "batch_size": batch_size, "grad_accum": grad_accum,
            "max_length": max_length, "seed": seed, "reference": "sft adapter (TRL 'ref' copy)",
            "sft_adapter": str(sft_adapter), "base_model": str(base_model), "eos_token": tok.eos_token,
        })
        shutil.rmtree(work, ignore_errors=True)
        tok.padding_side = "left"
        _save(trainer, tok, tmp, log)
    return log
