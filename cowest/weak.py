"""The weak model: loading (full precision or 4-bit), prompt rendering, generation, scoring.

The weak model is a causal LM that can be fine-tuned (Llama-3-8B-Instruct in the paper,
SmolLM2-135M-Instruct in the offline miniature). Everything that touches its tokens goes
through this module so that training (SFT, DPO) and inference see exactly the same text:

* :func:`render_prompt` turns a user message into the prompt string. Instruction models
  use their own chat template (with the generation prompt); base models without a chat
  template use the plain-text format documented in :data:`BASE_PROMPT_FORMAT`.
* The prompt string is tokenized with ``tokenizer(text)`` (default special tokens), which
  is what TRL 1.16 does for prompt-completion and preference data, and a leading BOS that
  the template writes as text is removed when the tokenizer adds one itself, so no
  sequence ever starts with two BOS tokens.
* A completion ends with :func:`end_token` (the chat template's end-of-turn token, e.g.
  ``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama-3; the tokenizer's EOS for base
  models). Training appends it; generation stops on it.

The CPU 4-bit trap: on a CPU (measured with bitsandbytes 0.50.2), any inference in eval
mode (a ``generate()`` call) on a 4-bit NF4 model before it is trained repacks its 4-bit
weights, and the gradients through those layers are silently wrong from then on (the only
sign is a warning that ``gemv_4bit`` has no autograd kernel); a freshly loaded model
trained in ``train()`` mode learns as fast as float32 LoRA. A model loaded with
``load_weak(..., quantization="4bit", trainable=True)`` is therefore flagged, and
:func:`generate`, :func:`completion_logprobs` and :func:`answer_confidence` refuse it with
a :class:`FourBitTrapError` until training clears the flag (``cowest.train`` does this
through :func:`mark_trained`). To look at the model before training, load a second,
non-trainable copy.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from tqdm.auto import tqdm

Quantization = Literal["none", "4bit"]

#: Plain-text prompt for base models (no chat template). ``{system_block}`` is the system
#: text followed by a blank line, or empty. The prompt ends with a newline after
#: "Answer:", so the completion starts on its own line (a clean token boundary for every
#: tokenizer) and the model learns to end it with the tokenizer's EOS token.
BASE_PROMPT_FORMAT = "{system_block}Question: {user_text}\nAnswer:\n"

#: Stop strings used by default for base-format prompts: a base model that has not (yet)
#: learned to emit EOS tends to continue with the next "Question:".
BASE_STOP = ("\nQuestion:",)

_TRAP_FLAG = "_cowest_untrained_4bit"


class FourBitTrapError(RuntimeError):
    """Inference was asked of a 4-bit model that is meant to be trained but is not yet."""


# --------------------------------------------------------------------------- loading


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it, float32 otherwise (CPU included)."""
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(source: str | Path, revision: str | None = None) -> Any:
    """The tokenizer of `source` (at hub commit `revision`) with a pad token and left padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source), revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_weak(
    model: str | Path,
    *,
    quantization: Quantization,
    adapter: Path | None = None,
    trainable: bool = False,
    device: str | None = None,
    merge: bool = True,
    revision: str | None = None,
) -> tuple[Any, Any]:
    """Load the weak model and its tokenizer.

    Args:
        model: a local folder (e.g. ``cowest.assets.hf_folder("smollm2-135m")``) or a hub id
            (e.g. ``meta-llama/Meta-Llama-3-8B-Instruct``; needs hub access or a local cache).
        quantization: ``"none"`` (bfloat16 on CUDA, float32 on CPU) or ``"4bit"`` (NF4,
            double quantisation, compute dtype bfloat16 on CUDA and float32 on CPU). No
            default: the pipeline passes the profile's ``WeakSpec.quantization``.
        adapter: a saved LoRA adapter folder. Its tokenizer is used when the folder has one.
            For inference (``trainable=False``, ``quantization="none"``, ``merge=True``) the
            adapter is merged into the base weights (``merge_and_unload``) and the result is a
            plain transformers model: generation then runs one matrix product per adapted
            layer instead of three (``benchmarks/levers.py`` measures the gain), with the same
            greedy outputs in float32 (``tests/test_weak.py``). Otherwise (training, 4-bit weights,
            which cannot absorb the update exactly, or ``merge=False``) the result is a
            ``PeftModel`` whose adapter is named ``"default"``.
        trainable: prepare for training: 4-bit models go through
            ``prepare_model_for_kbit_training`` (without gradient checkpointing) and are
            flagged against the CPU 4-bit trap (module docstring); an adapter is loaded
            trainable. Otherwise the model is frozen and in eval mode.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; default CUDA when available.
        revision: the hub commit of ``model`` (``WeakSpec.revision``; None: the latest).
        merge: merge an inference adapter into the weights (see ``adapter``). In bfloat16
            (CUDA) the merged weights are rounded once to bfloat16, which can change a rare
            near-tie of greedy decoding; pass ``merge=False`` to keep the adapter separate.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left and has a pad token.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quantization not in ("none", "4bit"):
        raise ValueError(f"quantization must be 'none' or '4bit', got {quantization!r}")
    device = device or default_device()
    dtype = compute_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    elif device != "cpu":
        kwargs["device_map"] = {"": device}

    net = AutoModelForCausalLM.from_pretrained(str(model), revision=revision, **kwargs)
    quantizer = getattr(net, "hf_quantizer", None)
    if quantizer is not None and "gguf" in str(getattr(quantizer, "quantization_config", "")).lower():
        quantizer.remove_quantization_config(net)  # GGUF markers make trainers refuse the model

    tok_source: str | Path = model
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").exists():
        tok_source, revision = adapter, None
    tok = load_tokenizer(tok_source, revision)
    if net.generation_config.pad_token_id is None:
        net.generation_config.pad_token_id = tok.pad_token_id

    if quantization == "4bit" and trainable:
        from peft import prepare_model_for_kbit_training

        # Gradient checkpointing only slows a CPU down; on CUDA TRL's config enables it.
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)

    if adapter is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, str(adapter), is_trainable=trainable)
        if merge and not trainable and quantization == "none":
            net = net.merge_and_unload()  # plain weights W + scale * B @ A: a faster generate()

    if trainable:
        net.train()
        if quantization == "4bit":
            setattr(net, _TRAP_FLAG, True)
    else:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    return net, tok


def mark_trained(model: Any) -> None:
    """Clear the CPU 4-bit trap flag once the model has been trained."""
    for m in (model, getattr(model, "base_model", None), getattr(model, "module", None)):
        if m is not None and getattr(m, _TRAP_FLAG, False):
            setattr(m, _TRAP_FLAG, False)


def _check_trap(model: Any) -> None:
    if getattr(model, _TRAP_FLAG, False) or getattr(getattr(model, "base_model", None), _TRAP_FLAG, False):
        raise FourBitTrapError(
            "this 4-bit model was loaded for training and has not been trained yet: on a CPU, "
            "inference now would repack its weights and corrupt later gradients. Train it first, "
            "or load a separate copy with load_weak(..., trainable=False) for inference."
        )


# --------------------------------------------------------------------------- prompts


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` puts a BOS token in front by itself."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def render_prompt(tokenizer: Any, user_text: str, system: str | None = None) -> str:
    """The prompt string for one user message, used identically by SFT, DPO and generation.

    With a chat template: ``apply_chat_template([system?, user], add_generation_prompt=True)``
    (with ``system=None`` the template's own default system prompt, if any, applies).
    Without one (base models): :data:`BASE_PROMPT_FORMAT`, i.e.::

        {system}\\n\\n            (only when a system text is given)
        Question: {user_text}\\n
        Answer:\\n

    A leading BOS written by the template is dropped when the tokenizer adds one itself.
    """
    if has_chat_template(tokenizer):
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": user_text}
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        system_block = f"{system}\n\n" if system else ""
        text = BASE_PROMPT_FORMAT.format(system_block=system_block, user_text=user_text)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def end_token(tokenizer: Any) -> str:
    """The token that ends a completion: the chat template's end-of-turn token, else EOS.

    Found by rendering a one-turn conversation and reading the special token that follows
    the assistant's text (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama-3,
    ``<end_of_turn>`` for Gemma chat); base models use ``tokenizer.eos_token``.
    """
    eos = tokenizer.eos_token
    if not has_chat_template(tokenizer):
        return eos
    marker = "XQZJ-marker"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # noqa: BLE001 - exotic templates: fall back on EOS
        return eos
    tail = text.split(marker, 1)[-1].lstrip()
    specials = sorted(
        set(tokenizer.all_special_tokens) | {str(t) for t in tokenizer.get_added_vocab()}, key=len, reverse=True
    )
    for s in specials:
        if s and tail.startswith(s):
            return s
    return eos


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end generation: the end token, the tokenizer's and the model's EOS."""
    ids: list[int] = []
    for t in (end_token(tokenizer), tokenizer.eos_token):
        if t is not None:
            tid = tokenizer.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid >= 0:
                ids.append(tid)
    cfg = getattr(model, "generation_config", None)
    gen_eos = getattr(cfg, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.append(gen_eos)
    elif gen_eos:
        ids.extend(int(i) for i in gen_eos)
    return list(dict.fromkeys(ids))


# --------------------------------------------------------------------------- generation


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _truncate_at(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int,
    batch_size: int,
    desc: str | None = None,
    stop: Sequence[str] | None = None,
) -> list[list[str]]:
    """Complete rendered prompts; ``result[i]`` holds ``num_samples`` completions of ``prompts[i]``.

    * Greedy when ``temperature == 0`` (the ``num_samples`` completions are then identical
      and computed once); otherwise multinomial sampling with ``temperature`` and
      ``top_p`` (``top_k`` disabled). Sampling is seeded once per call with ``seed``, so the
      same call (same prompts, ``batch_size``, model) gives the same samples; a different
      batching gives different, equally valid samples.
    * ``batch_size`` prompts per forward pass (each expanded into ``num_samples``
      sequences), left-padded, sorted by length; the result is in the input order.
      ``max_new_tokens``, ``batch_size`` and ``seed`` have no default: the pipeline passes
      the profile's ``WeakSpec.max_new_tokens``, ``WeakSpec.gen_batch_size`` and seed.
    * Stops at the end token (:func:`end_token`) or any EOS of the model; completions are
      decoded without special tokens. ``stop`` strings additionally cut the text (default:
      :data:`BASE_STOP` for models without a chat template, none otherwise).
    * Runs in eval mode under ``torch.inference_mode`` (the previous mode is restored).
      Refuses a 4-bit model loaded for training and not trained yet (CPU 4-bit trap).
    """
    from transformers import GenerationConfig

    _check_trap(model)
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    if not prompts:
        return []
    sampling = temperature > 0
    k = num_samples if sampling else 1
    if stop is None:
        stop = () if has_chat_template(tokenizer) else BASE_STOP
    device = _model_device(model)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,
        num_return_sequences=k,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    extra: dict[str, Any] = {}
    if stop:
        gen_cfg.stop_strings = list(stop)
        extra["tokenizer"] = tokenizer

    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    results: list[list[str]] = [[] for _ in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if sampling:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    try:
        with _eval_mode(model), tqdm(total=len(prompts), desc=desc or "generate", unit="prompt",
                                     leave=False) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
                out = model.generate(**enc, generation_config=gen_cfg, **extra)
                new = out[:, enc["input_ids"].shape[1]:]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    chunk = texts[j * k:(j + 1) * k]
                    chunk = [_truncate_at(t, stop) for t in chunk] if stop else chunk
                    results[i] = chunk if sampling else chunk * num_samples
                bar.update(len(idx))
    finally:
        tokenizer.padding_side = old_side
    return results


# --------------------------------------------------------------------------- scoring


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _split_ids(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt+completion and where the completion starts (TRL's rule)."""
    p_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    return full, _common_prefix(p_ids, full)


def _token_logprobs(model: Any, seqs: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """log p(token_t | tokens_<t) for t >= 1 of each sequence (right padding, one batch)."""
    device = _model_device(model)
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = ids[:, 1:].to(device).unsqueeze(-1)
    per_tok = logp.gather(-1, tok).squeeze(-1).cpu()
    return [per_tok[r, : len(s) - 1] for r, s in enumerate(seqs)]


def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    completions: list[str],
    batch_size: int = 8,
) -> list[float]:
    """Sum of the token log-probabilities of each completion given its prompt.

    Tokenized as TRL does: ``tokenizer(prompt)`` and ``tokenizer(prompt + completion)``;
    the completion is what follows their common prefix. Nothing is appended: pass
    ``completion + end_token(tokenizer)`` to score the end of turn too (as DPO does).
    Runs in eval mode under ``torch.inference_mode``; refuses an untrained trainable 4-bit model.
    """
    _check_trap(model)
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions differ in length")
    items = [_split_ids(tokenizer, p, c) for p, c in zip(prompts, completions)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    with _eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            per_tok = _token_logprobs(model, [items[i][0] for i in idx], pad)
            for j, i in enumerate(idx):
                full, start_c = items[i]
                # per_tok[t-1] scores token t; completion tokens are start_c .. len-1
                out[i] = float(per_tok[j][max(start_c, 1) - 1:].sum()) if start_c < len(full) else 0.0
    return out


def answer_confidence(
    model: Any,
    tokenizer: Any,
    prompt: str,
    completion: str,
    answer_span: str,
    *,
    reduce: Literal["mean", "sum"] = "mean",
) -> float:
    """The model's probability of the answer tokens inside its completion.

    ``answer_span`` is located at its LAST occurrence in ``completion`` (answers usually
    close a draft); the tokens of ``prompt + completion`` that overlap it are scored, each
    given everything before it. ``reduce="mean"`` (default) returns ``exp(mean log-prob)``,
    the geometric-mean per-token probability, which does not shrink with the answer's
    length; ``reduce="sum"`` returns ``exp(sum)``, the joint probability of the span.
    Raises ``ValueError`` when the span is not in the completion.
    """
    _check_trap(model)
    pos = completion.rfind(answer_span) if answer_span else -1
    if pos < 0:
        raise ValueError(f"answer span {answer_span!r} not found in the completion")
    text = prompt + completion
    lo, hi = len(prompt) + pos, len(prompt) + pos + len(answer_span)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    wanted = [t for t, (a, b) in enumerate(offsets) if t >= 1 and b > a and a < hi and b > lo]
    if not wanted:
        raise ValueError(f"no tokens cover the answer span {answer_span!r}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with _eval_mode(model):
        per_tok = _token_logprobs(model, [ids], pad)[0]
    lps = torch.stack([per_tok[t - 1] for t in wanted])
    value = lps.mean() if reduce == "mean" else lps.sum()
    return math.exp(float(value))
