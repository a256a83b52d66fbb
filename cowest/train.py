"""Training the weak model over TRL 1.16: one function per method (SFT, DPO).

Every hyperparameter comes from the profile's :class:`cowest.config.WeakSpec`, and only
from there: ``weak.sft`` (:class:`~cowest.config.TrainSpec`), ``weak.dpo``
(:class:`~cowest.config.DPOSpec`), ``weak.lora`` (:class:`~cowest.config.LoraSpec`) and
``weak.quantization``. This module restates none of their defaults. The TRL/peft objects
are built by pure functions that need no model (:func:`sft_config`, :func:`dpo_config`,
:func:`lora_config`), so a test can check that every spec field reaches them.

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

The fixed rules of this module, applied to both configs before the spec's ``trl`` mapping
(which comes last and may override any of them, e.g. ``logging_steps``, ``save_strategy``,
``lr_scheduler_type``, ``warmup_steps``, ``optim``, ``bf16``): bf16 mixed precision on a
bf16-capable GPU and exact float32 on a CPU; activation checkpointing on a GPU only; a
loss logged at the first step and every 5 steps; no checkpoints, no evaluation, no
reporting; ``seed`` and ``data_seed`` from the profile's seed. A ``trl`` key that is not a
field of ``SFTConfig``/``DPOConfig`` is a ``ValueError`` raised before any model is loaded.

The compact LM head on a CPU. TRL 1.16's trainers score tokens through a fused LM head
(``trl.trainer.utils.add_fused_lm_head``: the model is called with ``fused_lm_head=True``
and returns per-token log-probabilities without materialising the logits). On CUDA/XPU it
projects only the positions whose next-token label is not ``-100`` (``compact =
_use_triton(device)``); on any other device it projects every position, prompt and padding
included, and zeroes them afterwards. That costs more than half of a CPU SFT step.
:func:`compact_lm_head` makes that one decision true on the CPU as well, for the duration
of a loss computation: the same TRL code then runs on the completion rows only (the
per-token values, their gradients and every logged metric are unchanged; the masked rows
were zeroed anyway). The trainers built here do this in ``compute_loss`` (and DPO's
``compute_ref_log_probs``) unless their ``compact_lm_head`` attribute is set to False.
It relies on a TRL internal, pinned by ``tests/test_train.py`` together with ``trl==1.16.0``;
if the internal is gone, training falls back to TRL's own path with a warning.

Both functions load the model fresh and in train mode, and never run inference before
training (the CPU 4-bit trap, see :mod:`cowest.weak`). They save only the final adapter
and the tokenizer into ``out_dir`` (atomically, via :func:`cowest.artifacts.atomic_dir`),
plus ``train_log.json`` (which records the whole ``WeakSpec``); no intermediate checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from cowest.artifacts import atomic_dir, write_json
from cowest.dropout import use_sparse_dropout
from cowest.notebooks import rendered
from cowest.weak import end_token, load_tokenizer, load_weak, mark_trained

if TYPE_CHECKING:
    from peft import LoraConfig
    from trl import DPOConfig, SFTConfig

    from cowest.config import DPOSpec, LoraSpec, TrainSpec, WeakSpec

logger = logging.getLogger(__name__)

#: The TRL release whose internals :func:`compact_lm_head` relies on (pinned in pyproject.toml).
TRL_VERSION = "1.16.0"


# --------------------------------------------------------------------------- compact LM head


def compact_head_available() -> bool:
    """Whether TRL still exposes the switch :func:`compact_lm_head` flips."""
    from trl.trainer import utils as trl_utils

    return callable(getattr(trl_utils, "_use_triton", None)) and callable(getattr(trl_utils, "add_fused_lm_head", None))


@contextmanager
def compact_lm_head(enabled: bool = True) -> Iterator[bool]:
    """Within the block, TRL's fused LM head projects only the scored positions on a CPU too.

    ``trl.trainer.utils.add_fused_lm_head`` decides per call ``compact =
    _use_triton(hidden_states.device)``: true on CUDA/XPU with Triton, false elsewhere. The
    block replaces that name in ``trl.trainer.utils`` (and only there: the chunked kernel
    still folds its tiles in plain torch on a CPU) by a function that is also true for a
    CPU device, and restores it on exit. Yields whether the compact path is in force; when
    ``enabled`` is False, or the TRL internal is gone (a warning), nothing is changed.
    """
    if not enabled:
        yield False
        return
    if not compact_head_available():
        logger.warning("trl %s has no trl.trainer.utils._use_triton: the CPU LM head scores every position",
                       _trl_version())
        yield False
        return
    from trl.trainer import utils as trl_utils

    original = trl_utils._use_triton

    def compact_on_cpu(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = compact_on_cpu
    try:
        yield True
    finally:
        trl_utils._use_triton = original


def _trl_version() -> str:
    import trl

    return trl.__version__


class _CompactHeadMixin:
    """Trainer mixin: loss (and reference log-prob) computations under :func:`compact_lm_head`."""

    #: set to False on an instance to run TRL's own (full-sequence on a CPU) LM head
    compact_lm_head: bool = True

    def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
        with compact_lm_head(self.compact_lm_head):
            return super().compute_loss(*args, **kwargs)  # type: ignore[misc]


class _CompactRefMixin(_CompactHeadMixin):
    def compute_ref_log_probs(self, *args: Any, **kwargs: Any) -> Any:
        with compact_lm_head(self.compact_lm_head):
            return super().compute_ref_log_probs(*args, **kwargs)  # type: ignore[misc]


@functools.cache
def sft_trainer_class() -> type:
    """TRL's ``SFTTrainer`` with the compact LM head on a CPU (:func:`compact_lm_head`)."""
    from trl import SFTTrainer

    return type("CompactSFTTrainer", (_CompactHeadMixin, SFTTrainer), {"__module__": __name__})


@functools.cache
def dpo_trainer_class() -> type:
    """TRL's ``DPOTrainer`` with the compact LM head on a CPU (:func:`compact_lm_head`)."""
    from trl import DPOTrainer

    return type("CompactDPOTrainer", (_CompactRefMixin, DPOTrainer), {"__module__": __name__})


def _on_cuda() -> bool:
    return torch.cuda.is_available()


def _spec_dict(spec: Any) -> dict[str, Any]:
    """A config spec as plain data (pydantic ``model_dump`` or dataclass ``asdict``)."""
    if hasattr(spec, "model_dump"):
        return spec.model_dump()
    return dataclasses.asdict(spec)


def _trl_overrides(weak: WeakSpec, section: str, cls: type) -> dict[str, Any]:
    """The spec's ``trl`` mapping, every key checked against the TRL config's fields."""
    spec = getattr(weak, section)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in spec.trl:
        if key not in known:
            raise ValueError(f"weak_models.{weak.name}.{section}.trl: {key} is not a trl.{cls.__name__} field")
    return dict(spec.trl)


def _checkpointing_field() -> str:
    """``activation_checkpointing`` (transformers >= 5.2x) or, before it, ``gradient_checkpointing``.

    The GPU check found a CUDA image whose transformers (5.17) has only the old name.
    """
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _common_args(spec: TrainSpec | DPOSpec, output_dir: Path, seed: int) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO: the spec's values plus this module's rules."""
    cuda = _on_cuda()
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": spec.epochs,
        "learning_rate": spec.learning_rate,
        "per_device_train_batch_size": spec.batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "max_length": spec.max_length,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 5,
        "logging_first_step": True,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "use_cpu": not cuda,
        # bf16 mixed precision on a capable GPU; exact float32 on a CPU (trl: {bf16: ...} overrides)
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "fp16": False,
        # checkpointing saves memory for an 8B model on a GPU; on a CPU it only costs time
        _checkpointing_field(): cuda,
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
        # rendered by the runner: no progress bar in the notebook (the runner prints progress_callback's lines)
        "disable_tqdm": rendered(),
    }


def _callbacks(trainer: Any) -> Any:
    """The trainer's callbacks as the project wants them.

    - The last step is always logged: the summaries and notebook 04 read the final loss, which
      ``logging_steps`` would skip when the step count is not a multiple of it (a 4-step DPO run
      logged only step 1, whose loss is ln 2 by construction, and read as "learned nothing").
    - With ``disable_tqdm`` transformers swaps its progress bar for ``PrinterCallback``, which
      prints every logged dict ("{'loss': ..., 'grad_norm': ...}") to stdout, and so into the
      rendered notebook; it is removed (the runner prints ``progress_callback``'s lines instead).
    """
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    class _LogLastStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step == state.max_steps:
                control.should_log = True
            return control

    trainer.add_callback(_LogLastStep())
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    return trainer


def progress_callback(method: str, emit: Callable[[str], None]) -> Any:
    """A ``TrainerCallback`` that hands ``emit`` one line per logged step ("sft step 20/96,
    loss 0.512"); the pipeline writes it to the stage journal, which the runner prints in the
    terminal (a notebook's own stderr would land in the rendered notebook)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                emit(f"{method} step {state.global_step}/{state.max_steps}, loss {logs['loss']:.3f}")

    return _Progress()


def sft_config(weak: WeakSpec, out_dir: Path, seed: int, eos_token: str) -> SFTConfig:
    """The ``SFTConfig`` of ``weak.sft`` (no model needed); ``weak.sft.trl`` is applied last.

    ``out_dir`` is the trainer's working folder; ``eos_token`` is appended by TRL to every
    completion (:func:`cowest.weak.end_token` of the model's tokenizer).
    Raises ``ValueError`` for a ``trl`` key that is not an ``SFTConfig`` field.
    """
    from trl import SFTConfig

    overrides = _trl_overrides(weak, "sft", SFTConfig)
    cfg = _common_args(weak.sft, out_dir, seed)
    cfg.update({"completion_only_loss": True, "eos_token": eos_token, "packing": False})
    cfg.update(overrides)
    return SFTConfig(**cfg)


def dpo_config(weak: WeakSpec, out_dir: Path, seed: int) -> DPOConfig:
    """The ``DPOConfig`` of ``weak.dpo`` (no model needed); ``weak.dpo.trl`` is applied last.

    Reference log-probs are computed on the fly from the frozen ``"ref"`` adapter
    (``precompute_ref_log_probs=False``). Raises ``ValueError`` for a ``trl`` key that is
    not a ``DPOConfig`` field.
    """
    from trl import DPOConfig

    overrides = _trl_overrides(weak, "dpo", DPOConfig)
    cfg = _common_args(weak.dpo, out_dir, seed)
    cfg.update({"beta": weak.dpo.beta, "loss_type": weak.dpo.loss_type, "precompute_ref_log_probs": False})
    cfg.update(overrides)
    return DPOConfig(**cfg)


def lora_config(lora: LoraSpec) -> LoraConfig:
    """The peft ``LoraConfig`` of a ``LoraSpec`` (no bias training, causal LM)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _summary(trainer: Any, method: str, runtime: float, extra: dict[str, Any]) -> dict[str, Any]:
    state = trainer.state
    steps = [h for h in state.log_history if "loss" in h]
    return {
        "method": method,
        "compact_lm_head": bool(getattr(trainer, "compact_lm_head", False)) and compact_head_available(),
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


def _last_checkpoint(work: Path) -> str | None:
    """The newest ``checkpoint-N`` folder a killed run left in ``work`` (None: start fresh)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(work).is_dir():
        return None
    last = get_last_checkpoint(str(work))
    if last:
        logger.warning("resuming from %s", last)
    return last


def _save(trainer: Any, tokenizer: Any, folder: Path, log: dict[str, Any]) -> None:
    trainer.model.save_pretrained(str(folder), selected_adapters=["default"])
    tokenizer.save_pretrained(str(folder))
    write_json(folder / "train_log.json", log)


def sft(
    base_model: str | Path,
    rows: list[dict[str, str]],
    out_dir: Path,
    *,
    weak: WeakSpec,
    seed: int,
    on_trainer: Callable[[Any], None] | None = None,
    checkpoints: Path | None = None,
    commit: bool = True,
) -> dict[str, Any]:
    """Supervised fine-tuning of a LoRA adapter; returns the training log (also saved).

    Args:
        base_model: folder or hub id of the weak model.
        rows: ``{"prompt": rendered prompt (cowest.weak.render_prompt), "completion": target}``.
            The end token is appended by TRL; loss on the completion tokens only.
        out_dir: receives ``adapter_model.safetensors``, ``adapter_config.json``, the
            tokenizer and ``train_log.json``; replaced atomically on success.
        weak: the profile's weak model: ``weak.sft`` (:func:`sft_config`), ``weak.lora``
            (:func:`lora_config`; ``dropout_sampler: sparse`` swaps peft's dropout modules for
            :class:`cowest.dropout.SparseDropout`) and ``weak.quantization`` (``"4bit"`` trains QLoRA: NF4
            base, ``prepare_model_for_kbit_training``).
        seed: the profile's seed (``set_seed``, ``SFTConfig.seed`` and ``data_seed``).
        on_trainer: called with the ``SFTTrainer`` after construction and before training.
        checkpoints: a folder that outlives a crash for TRL's checkpoints (saved when the
            profile's ``sft.trl`` sets ``save_strategy: steps`` and ``save_steps``); a rerun
            resumes from the last one there, and it is removed once training finishes.
        commit: False trains without writing ``out_dir`` (the processes other than the main
            one under ``accelerate launch``, see ``cowest.stage``).
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig

    if not rows:
        raise ValueError("sft: no training rows")
    _trl_overrides(weak, "sft", SFTConfig)  # unknown trl keys fail before anything is loaded
    set_seed(seed)
    eos = end_token(load_tokenizer(base_model, weak.revision))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, commit=commit) as tmp:
        work = Path(checkpoints) if checkpoints else tmp / "_trainer"
        args = sft_config(weak, work, seed, eos)  # bad values fail here, before the model loads
        model, tok = load_weak(base_model, quantization=weak.quantization, trainable=True, revision=weak.revision)
        tok.padding_side = "right"
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        n_long = _count_too_long(tok, [r["prompt"] + r["completion"] for r in rows], args.max_length)
        trainer = _callbacks(sft_trainer_class()(model=model, args=args, train_dataset=data, processing_class=tok,
                                                  peft_config=lora_config(weak.lora)))
        n_sparse = use_sparse_dropout(trainer.model) if weak.lora.dropout_sampler == "sparse" else 0
        if on_trainer is not None:
            on_trainer(trainer)
        resume = _last_checkpoint(work)
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume)
        runtime = time.perf_counter() - t0
        mark_trained(trainer.model)
        log = _summary(trainer, "sft", runtime, {
            "sparse_dropout_modules": n_sparse,
            "n_rows": len(rows), "n_truncated": n_long, "quantization": weak.quantization, "eos_token": eos,
            "seed": seed, "base_model": str(base_model), "weak": _spec_dict(weak),
            "resumed_from": Path(resume).name if resume else None,
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
    weak: WeakSpec,
    seed: int,
    on_trainer: Callable[[Any], None] | None = None,
    checkpoints: Path | None = None,
    commit: bool = True,
) -> dict[str, Any]:
    """DPO of the SFT adapter against itself as the reference; returns the log (also saved).

    Args:
        base_model: the model the SFT adapter was trained on.
        sft_adapter: the folder :func:`sft` wrote; it is trained further (as ``"default"``)
            and copied by TRL into the frozen reference adapter ``"ref"``. Its LoRA shape is
            the one it was trained with; ``weak.lora`` is not used here.
        pairs: ``{"prompt": rendered prompt, "chosen": completion, "rejected": completion}``;
            TRL appends the end token to both completions.
        out_dir: the aligned adapter (loadable with ``load_weak(base_model, adapter=out_dir)``),
            the tokenizer and ``train_log.json`` (loss, rewards/margins, rewards/accuracies...).
        weak: the profile's weak model: ``weak.dpo`` (:func:`dpo_config`) and
            ``weak.quantization`` (must be the one the SFT adapter was trained with).
        seed: the profile's seed (``set_seed``, ``DPOConfig.seed`` and ``data_seed``).
        on_trainer: called with the ``DPOTrainer`` after construction and before training
            (tests use it to inspect the reference adapter).
        checkpoints: as for :func:`sft` (``dpo.trl``: ``save_strategy: steps``, ``save_steps``).
        commit: as for :func:`sft`.
    """
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig

    if not pairs:
        raise ValueError("dpo: no preference pairs")
    _trl_overrides(weak, "dpo", DPOConfig)  # unknown trl keys fail before anything is loaded
    set_seed(seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, commit=commit) as tmp:
        work = Path(checkpoints) if checkpoints else tmp / "_trainer"
        args = dpo_config(weak, work, seed)  # bad values fail here, before the model loads
        model, tok = load_weak(base_model, quantization=weak.quantization, adapter=Path(sft_adapter),
                               trainable=True, revision=weak.revision)
        if list(model.peft_config) != ["default"]:
            raise RuntimeError(f"expected one adapter named 'default', got {list(model.peft_config)}")
        tok.padding_side = "right"
        tok.eos_token = end_token(tok)  # DPOTrainer appends tokenizer.eos_token to chosen/rejected
        data = Dataset.from_list(
            [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
        )
        n_long = _count_too_long(
            tok, [p["prompt"] + c for p in pairs for c in (p["chosen"], p["rejected"])], args.max_length
        )
        trainer = _callbacks(dpo_trainer_class()(model=model, args=args, train_dataset=data, processing_class=tok))
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
        resume = _last_checkpoint(work)
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume)
        runtime = time.perf_counter() - t0
        mark_trained(trainer.model)
        log = _summary(trainer, "dpo", runtime, {
            "n_pairs": len(pairs), "n_truncated_sequences": n_long, "quantization": weak.quantization,
            "seed": seed, "reference": "sft adapter (TRL 'ref' copy)", "sft_adapter": str(sft_adapter),
            "base_model": str(base_model), "eos_token": tok.eos_token, "weak": _spec_dict(weak),
            "resumed_from": Path(resume).name if resume else None,
        })
        shutil.rmtree(work, ignore_errors=True)
        tok.padding_side = "left"
        _save(trainer, tok, tmp, log)
    return log
