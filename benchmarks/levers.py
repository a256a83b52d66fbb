"""CPU levers, measured side by side in one run, at equal work.

1. The compact LM head (``cowest.train.compact_lm_head``): TRL 1.16 projects every position
   of a batch through the LM head on a CPU; the compact path projects only the completion
   positions. One SFT step (forward + backward of one batch of 8 prompt-completion rows of
   ~100-130 tokens, LoRA, float32) for SmolLM2-135M (vocabulary 49k) and Gemma-3-270M
   (262k), and one DPO step (4 pairs = 8 sequences, policy + reference forward, backward)
   for SmolLM2, each timed on the same trainer and the same batch with the compact path
   off and on. The losses of the two paths are asserted equal.
2. Merged LoRA weights for generation (``cowest.weak.load_weak(..., merge=True)``): greedy
   drafts of the same prompts with the adapter merged into the weights and kept separate;
   the outputs are asserted identical.
3. FLARE's log-probabilities from the strong model's server (``cowest.llama_server``):
   greedy chat completions with ``logprobs=True`` from the tiny profile's strong GGUF
   (Qwen2.5-Coder-0.5B, vocabulary 152k, ``logits_all=True`` as FLARE's server runs), a
   ~400-token prompt with passages and FLARE's 16-token look-ahead and a 64-token answer,
   through llama-cpp-python's own ``Llama`` and through ``FastLogprobLlama`` (the same
   model file loaded twice); the whole responses are asserted equal. The same completion
   without log-probabilities is timed too: the floor that any logprob path adds to.
4. Sparse LoRA dropout (``lora.dropout_sampler: sparse``, ``cowest.dropout``): one SFT step of
   SmolLM2-135M and Gemma-3-270M with peft's ``nn.Dropout`` and with ``SparseDropout`` (the
   same p, the tiny profile's 0.05) in every LoRA layer, on the same trainer and batch. The two
   draw other masks from one distribution, so their losses differ by dropout noise (reported).
   Run alone: ``--threads 2 --reps 3 --skip sft-smollm2 sft-gemma dpo generate flare-logprobs --out
   results/benchmarks/dropout_lever.json``.

The modes alternate within each repetition (A B, B A, ...) so that a slow spell of a shared
CPU hits both; after one untimed warm-up step, the table reports the fastest repetition of
each mode (other jobs only ever add time) and their ratio; the JSON keeps every timing. The LoRA settings
are the tiny profile's (``configs/tiny.yaml``); the adapters have random non-zero weights
(a fresh LoRA B is zero). Timings depend on what else runs on the machine: compare the
ratios, not the absolute times, across runs.

Usage::

    .venv/bin/python benchmarks/levers.py [--threads 1] [--reps 2] [--out results/benchmarks/levers.json]

Prints a Markdown table and writes the JSON (machine, versions, date, every timing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cowest import train  # noqa: E402
from cowest.assets import hf_folder  # noqa: E402
from cowest.config import load_profile  # noqa: E402
from cowest.weak import end_token, generate, load_tokenizer, load_weak, render_prompt  # noqa: E402

SYSTEM = ("You are a careful science tutor for curious adults. Read the question, think about the physical or "
          "biological mechanism behind it, and answer in two or three plain sentences that a reader without "
          "special training can follow. Do not use lists, headings or jargon.")
TOPICS = [
    ("Why do leaves change colour in autumn?",
     "Leaves stop making chlorophyll as the days shorten, so the green fades. The yellow and orange pigments "
     "that were there all along show through, and some trees also make red pigments."),
    ("How does a refrigerator keep food cold?",
     "A pump compresses a refrigerant gas, which releases heat outside the box as it condenses. Inside, the "
     "liquid evaporates again and absorbs heat from the food compartment."),
    ("What causes the tides in the ocean?",
     "The Moon's gravity pulls on the oceans more strongly on the side facing it, raising a bulge of water. A "
     "second bulge forms on the far side, and the Earth turns under both every day."),
    ("Why is the sky blue on a clear day?",
     "Sunlight is scattered by the molecules of the air, and short blue wavelengths scatter much more than "
     "red ones. That scattered blue light reaches our eyes from every direction of the sky."),
    ("How do vaccines protect people from disease?",
     "A vaccine shows the immune system a harmless piece or copy of a germ. The body makes antibodies and "
     "memory cells, so it can respond quickly if the real germ ever arrives."),
    ("Why does bread rise before it is baked?",
     "Yeast in the dough eats sugars and releases carbon dioxide gas. Gluten strands trap the bubbles, so "
     "the dough swells, and baking sets the airy structure."),
    ("What makes a rainbow appear after rain?",
     "Sunlight enters falling raindrops, bends, reflects off the back of each drop and bends again on the "
     "way out. Each colour bends by a different angle, so the light spreads into a band of colours."),
    ("How do bees make honey from flowers?",
     "Bees collect nectar and carry it back to the hive in a special stomach. Worker bees pass it along and "
     "fan it with their wings until most of the water evaporates and it thickens into honey."),
]
GEN_QUESTIONS = [
    "Name three planets of the solar system.", "What is the boiling point of water at sea level?",
    "Give one tip for sleeping well.", "What is the capital of Italy?", "Describe a cat in one sentence.",
    "Why do we need to drink water?", "What colour are ripe bananas?", "How many days are in a week?",
]


def _best(xs: list[float]) -> float:
    return min(xs)


def _stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs)}


def _alternating(reps: int, modes: tuple[Any, Any], run: Callable[[Any], float]) -> dict[Any, list[float]]:
    """``run(mode)`` -> seconds, for each mode in each repetition, the order flipped every repetition."""
    times: dict[Any, list[float]] = {m: [] for m in modes}
    for rep in range(reps):
        for mode in (modes if rep % 2 == 0 else modes[::-1]):
            times[mode].append(run(mode))
    return times


def _perturb_lora_b(model: Any, adapter: str = "default", seed: int = 0, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n and f".{adapter}." in n:
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.dtype))


def _random_adapter(folder: Path, lora: Any, out: Path, scale: float = 0.02) -> Path:
    """A LoRA adapter of the profile's shape with non-zero random weights, saved like train.sft saves one."""
    from peft import get_peft_model

    model, tok = load_weak(folder, quantization="none")
    peft_model = get_peft_model(model, train.lora_config(lora))
    _perturb_lora_b(peft_model, scale=scale)
    peft_model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _step_timer(trainer: Any, batch: dict[str, torch.Tensor], losses: dict[bool, list[float]]) -> Callable:
    """One training step (forward + backward, no optimizer update, so every step sees the same weights)."""
    model = trainer.model
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which is not run here

    def run(compact: bool) -> float:
        trainer.compact_lm_head = compact
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same LoRA dropout masks in both modes
        t0 = time.perf_counter()
        loss = trainer.training_step(model, {k: v.clone() for k, v in batch.items()})
        dt_ = time.perf_counter() - t0
        losses[compact].append(float(loss))
        model.zero_grad(set_to_none=True)
        return dt_

    return run


def _check_losses(losses: dict[bool, list[float]], what: str) -> float:
    full, compact = losses[False], losses[True]
    diff = max(abs(a - b) for a, b in zip(full, compact))
    if not all(abs(a - full[0]) <= 1e-5 * max(1.0, abs(full[0])) for a in full + compact):
        raise AssertionError(f"{what}: the compact and full LM heads gave different losses: {full} vs {compact}")
    return diff


def build_sft_step(name: str, weak: Any, workdir: Path, *, quantization: str = "none",
                   n_rows: int | None = None) -> tuple[Any, dict[str, torch.Tensor], Any, int]:
    """An SFT trainer (LoRA; QLoRA with ``quantization="4bit"``) and one collated batch of
    ``n_rows`` (default all 8) prompt-completion rows: ``(trainer, batch, tokenizer, n_rows)``.
    Also used by ``benchmarks/suite.py``."""
    from datasets import Dataset

    folder = hf_folder(name)
    tok = load_tokenizer(folder)
    rows = [{"prompt": render_prompt(tok, q, system=SYSTEM), "completion": c} for q, c in TOPICS[:n_rows]]
    args = train.sft_config(weak, workdir / f"sft-{name}-{quantization}", 0, end_token(tok))
    model, tok = load_weak(folder, quantization=quantization, trainable=True)
    tok.padding_side = "right"
    trainer = train.sft_trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                        processing_class=tok, peft_config=train.lora_config(weak.lora))
    _perturb_lora_b(trainer.model)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))]))
    return trainer, batch, tok, len(rows)


def bench_sft(name: str, weak: Any, reps: int, workdir: Path) -> dict[str, Any]:
    trainer, batch, tok, n_rows = build_sft_step(name, weak, workdir)
    model = trainer.model
    rows = TOPICS[:n_rows]
    lengths = batch["attention_mask"].sum(1).tolist()
    scored = int((batch["labels"][:, 1:] != -100).sum())
    losses: dict[bool, list[float]] = {False: [], True: []}
    run = _step_timer(trainer, batch, losses)
    run(True)  # warm-up (allocator, autograd), not timed
    times = _alternating(reps, (False, True), run)
    diff = _check_losses(losses, f"SFT {name}")
    del trainer, model
    return {
        "kind": "sft_step", "model": name, "vocab": len(tok), "batch": len(rows),
        "tokens_per_row": [int(x) for x in lengths], "padded_length": int(batch["input_ids"].shape[1]),
        "scored_positions": scored, "all_positions": int(batch["labels"][:, 1:].numel()),
        "full_s": times[False], "compact_s": times[True], "full_stats_s": _stats(times[False]),
        "compact_stats_s": _stats(times[True]), "loss": losses[False][0], "max_loss_diff": diff,
    }


def build_dpo_step(name: str, weak: Any, workdir: Path, *, quantization: str = "none",
                   n_pairs: int | None = None) -> tuple[Any, dict[str, torch.Tensor], Any, int]:
    """A DPO trainer (policy adapter ``"default"`` and reference ``"ref"``, as ``cowest.train.dpo``
    builds it; QLoRA with ``quantization="4bit"``) and one collated batch of ``n_pairs``
    (default ``weak.dpo.batch_size``) preference pairs: ``(trainer, batch, tokenizer, n_pairs)``.
    Also used by ``benchmarks/suite.py``."""
    from datasets import Dataset

    folder = hf_folder(name)
    tok = load_tokenizer(folder)
    adapter = _random_adapter(folder, weak.lora, workdir / f"adapter-{name}-{quantization}")
    pairs = []
    for i, (q, c) in enumerate(TOPICS[: n_pairs or weak.dpo.batch_size]):
        other = TOPICS[(i + 1) % len(TOPICS)][1]
        pairs.append({"prompt": render_prompt(tok, q, system=SYSTEM), "chosen": c, "rejected": other})
    args = train.dpo_config(weak, workdir / f"dpo-{name}-{quantization}", 0)
    model, tok = load_weak(folder, quantization=quantization, adapter=adapter, trainable=True)
    tok.padding_side = "right"
    tok.eos_token = end_token(tok)
    trainer = train.dpo_trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                        processing_class=tok)
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(peft_model.peft_config) == {"default", "ref"}
    _perturb_lora_b(peft_model, "default", seed=1)  # the policy differs from the reference
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))]))
    return trainer, batch, tok, len(pairs)


def bench_dropout(name: str, weak: Any, reps: int, workdir: Path) -> dict[str, Any]:
    """One SFT step with peft's ``nn.Dropout`` and with ``cowest.dropout.SparseDropout`` (the same p)
    in every LoRA layer, on the same trainer and batch (compact LM head on in both)."""
    from cowest.dropout import SparseDropout

    trainer, batch, tok, n_rows = build_sft_step(name, weak, workdir)
    model = trainer.model
    slots = [(m.lora_dropout, k, d) for m in model.modules()
             if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
             for k, d in m.lora_dropout.items() if type(d) is torch.nn.Dropout and d.p > 0]
    sparse = [SparseDropout(d.p) for _, _, d in slots]
    losses: dict[bool, list[float]] = {False: [], True: []}
    timer = _step_timer(trainer, batch, {True: losses[True], False: []})

    def run(use_sparse: bool) -> float:
        for (holder, key, d), sd in zip(slots, sparse):
            holder[key] = sd if use_sparse else d
        seconds = timer(True)  # the compact head in both modes
        if not use_sparse:
            losses[False].append(losses[True].pop())
        return seconds

    run(True)  # warm-up, not timed
    losses[True].clear()
    times = _alternating(reps, (False, True), run)
    return {
        "kind": "sft_dropout", "model": name, "batch": n_rows, "dropout_p": weak.lora.dropout,
        "lora_dropout_modules": len(slots), "padded_length": int(batch["input_ids"].shape[1]),
        "torch_s": times[False], "sparse_s": times[True], "torch_stats_s": _stats(times[False]),
        "sparse_stats_s": _stats(times[True]), "torch_losses": losses[False], "sparse_losses": losses[True],
    }


def bench_dpo(name: str, weak: Any, reps: int, workdir: Path) -> dict[str, Any]:
    trainer, batch, tok, n_pairs = build_dpo_step(name, weak, workdir)
    model = trainer.model
    pairs = TOPICS[:n_pairs]
    scored = int((batch["completion_mask"][:, 1:] != 0).sum())
    losses: dict[bool, list[float]] = {False: [], True: []}
    run = _step_timer(trainer, batch, losses)
    run(True)  # warm-up, not timed
    times = _alternating(reps, (False, True), run)
    diff = _check_losses(losses, f"DPO {name}")
    del trainer, model
    return {
        "kind": "dpo_step", "model": name, "vocab": len(tok), "batch": f"{len(pairs)} pairs",
        "tokens_per_row": [int(x) for x in batch["attention_mask"].sum(1).tolist()],
        "padded_length": int(batch["input_ids"].shape[1]), "scored_positions": scored,
        "all_positions": int(batch["input_ids"][:, 1:].numel()),
        "full_s": times[False], "compact_s": times[True], "full_stats_s": _stats(times[False]),
        "compact_stats_s": _stats(times[True]), "loss": losses[False][0], "max_loss_diff": diff,
    }


def bench_generate(name: str, weak: Any, reps: int, workdir: Path) -> dict[str, Any]:
    folder = hf_folder(name)
    adapter = _random_adapter(folder, weak.lora, workdir / f"gen-adapter-{name}", scale=0.01)
    merged, tok = load_weak(folder, quantization="none", adapter=adapter)
    unmerged, _ = load_weak(folder, quantization="none", adapter=adapter, merge=False)
    from peft import PeftModel

    assert not isinstance(merged, PeftModel) and isinstance(unmerged, PeftModel)
    prompts = [render_prompt(tok, q) for q in GEN_QUESTIONS]
    kw = dict(max_new_tokens=weak.max_new_tokens, batch_size=len(prompts), seed=0)
    outputs: dict[bool, list] = {}

    def run(is_merged: bool) -> float:
        model = merged if is_merged else unmerged
        t0 = time.perf_counter()
        out = generate(model, tok, prompts, **kw)
        dt_ = time.perf_counter() - t0
        if outputs.setdefault(is_merged, out) != out:
            raise AssertionError("greedy generation is not reproducible")
        return dt_

    generate(merged, tok, prompts[:2], max_new_tokens=4, batch_size=2, seed=0)  # warm-up
    generate(unmerged, tok, prompts[:2], max_new_tokens=4, batch_size=2, seed=0)
    times = _alternating(reps, (False, True), run)
    if outputs[True] != outputs[False]:
        raise AssertionError("merged and unmerged adapters generated different text")
    n_tokens = sum(len(tok(o[0], add_special_tokens=False)["input_ids"]) for o in outputs[True])
    return {
        "kind": "generate", "model": name, "prompts": len(prompts), "max_new_tokens": weak.max_new_tokens,
        "generated_tokens": n_tokens, "unmerged_s": times[False], "merged_s": times[True],
        "unmerged_tok_s": n_tokens / _best(times[False]), "merged_tok_s": n_tokens / _best(times[True]),
        "unmerged_stats_s": _stats(times[False]), "merged_stats_s": _stats(times[True]),
        "identical_outputs": True,
    }


def bench_flare_logprobs(reps: int, threads: int) -> dict[str, Any]:
    import llama_cpp

    from cowest.assets import gguf_path
    from cowest.llama_server import FastLogprobLlama

    strong = load_profile("tiny").strong_models[0]
    kw = dict(model_path=str(gguf_path(strong.model)), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
              logits_all=True, verbose=False, seed=0)
    models = {"library": llama_cpp.Llama(**kw), "fast": FastLogprobLlama(**kw)}
    passages = " ".join(a for _, a in TOPICS)
    chats = [[{"role": "system", "content": "Answer the question. Use the passages if they help.\n\n" + passages},
              {"role": "user", "content": f"{q} Think briefly, then end with a line 'Answer: X'."}]
             for q, _ in TOPICS[:4]]
    lengths = (16, 64)  # FLARE's look-ahead, then a whole answer
    outputs: dict[str, list] = {}

    def run(mode: str) -> float:
        model = models["fast" if mode == "fast" else "library"]
        lp = {} if mode == "none" else {"logprobs": True, "top_logprobs": 0}
        t0 = time.perf_counter()
        out = []
        for chat in chats:
            for n in lengths:
                model.reset()  # no prompt reuse between modes: each call evaluates its prompt
                r = model.create_chat_completion(chat, max_tokens=n, temperature=0.0, repeat_penalty=1.0, **lp)
                r = json.loads(json.dumps(r, default=float))
                r.pop("id"), r.pop("created")
                out.append(r)
        dt_ = time.perf_counter() - t0
        outputs.setdefault(mode, out)
        return dt_

    for m in models.values():
        m.create_chat_completion(chats[0], max_tokens=2, temperature=0.0)  # warm-up
    times: dict[str, list[float]] = {"library": [], "fast": [], "none": []}
    for i in range(reps):
        for mode in (("library", "fast", "none") if i % 2 == 0 else ("none", "fast", "library")):
            times[mode].append(run(mode))
    if outputs["fast"] != outputs["library"]:
        raise AssertionError("the fast logprob path returned a different response")
    texts = [r["choices"][0]["message"]["content"] for r in outputs["none"]]
    if texts != [r["choices"][0]["message"]["content"] for r in outputs["fast"]]:
        raise AssertionError("asking for logprobs changed the generated text")
    n_prompt = sum(r["usage"]["prompt_tokens"] for r in outputs["fast"])
    n_gen = sum(r["usage"]["completion_tokens"] for r in outputs["fast"])
    return {"kind": "flare_logprobs", "model": strong.model, "vocab": models["fast"].n_vocab(),
            "calls": len(chats) * len(lengths), "prompt_tokens": n_prompt, "generated_tokens": n_gen,
            "library_s": times["library"], "fast_s": times["fast"], "no_logprobs_s": times["none"],
            "identical_outputs": True}


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__}


def _table(results: list[dict[str, Any]]) -> str:
    lines = ["| measurement | model | before | after | ratio | check |", "|---|---|---|---|---|---|"]
    for r in results:
        if r["kind"] == "flare_logprobs":
            before, after, floor = _best(r["library_s"]), _best(r["fast_s"]), _best(r["no_logprobs_s"])
            lines.append(f"| FLARE logprobs, {r['calls']} chat calls, {r['prompt_tokens']} prompt + "
                         f"{r['generated_tokens']} generated tokens (s; llama-cpp-python -> cowest.llama_server; "
                         f"{floor:.2f} s without logprobs) | {r['model']} (vocab {r['vocab']}) | {before:.2f} | "
                         f"{after:.2f} | {before / after:.2f}x | identical responses |")
        elif r["kind"] == "generate":
            before, after = r["unmerged_tok_s"], r["merged_tok_s"]
            lines.append(f"| generation, {r['prompts']} prompts x <= {r['max_new_tokens']} tokens "
                         f"(tokens/s; unmerged -> merged) | {r['model']} | {before:.1f} | {after:.1f} | "
                         f"{after / before:.2f}x | same {r['generated_tokens']} tokens of text |")
        elif r["kind"] == "sft_dropout":
            before, after = _best(r["torch_s"]), _best(r["sparse_s"])
            lo = lambda xs: f"{statistics.mean(xs):.4f}"  # noqa: E731
            lines.append(f"| SFT step, batch {r['batch']}, {r['padded_length']} padded tokens/row, LoRA dropout "
                         f"p={r['dropout_p']} in {r['lora_dropout_modules']} layers (s; nn.Dropout -> SparseDropout) "
                         f"| {r['model']} | {before:.2f} | {after:.2f} | {before / after:.2f}x | same distribution, "
                         f"other masks: mean loss {lo(r['torch_losses'])} vs {lo(r['sparse_losses'])} |")
        else:
            full, compact = _best(r["full_s"]), _best(r["compact_s"])
            what = "SFT step" if r["kind"] == "sft_step" else "DPO step"
            lines.append(f"| {what}, batch {r['batch']}, {r['padded_length']} padded tokens/row, "
                         f"{r['scored_positions']}/{r['all_positions']} positions scored (s; full -> compact head) "
                         f"| {r['model']} (vocab {r['vocab']}) | {full:.2f} | {compact:.2f} | {full / compact:.2f}x "
                         f"| loss {r['loss']:.5f}, max diff {r['max_loss_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("COWEST_TEST_THREADS", "1")),
                    help="torch threads (default 1, or COWEST_TEST_THREADS: the 2-core machine is shared)")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions per mode (default 2)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "levers.json")
    ap.add_argument("--skip", nargs="*", default=[], choices=["sft-smollm2", "sft-gemma", "dpo", "generate", "flare-logprobs",
                                                                  "dropout-smollm2", "dropout-gemma"])
    ns = ap.parse_args(argv)

    torch.set_num_threads(ns.threads)
    profile = load_profile("tiny")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
        work = Path(tmp)
        plan = [
            ("sft-smollm2", lambda: bench_sft("smollm2-135m", profile.weak_model("smollm2-135m"), ns.reps, work)),
            ("sft-gemma", lambda: bench_sft("gemma3-270m", profile.weak_model("gemma3-270m"), ns.reps, work)),
            ("dpo", lambda: bench_dpo("smollm2-135m", profile.weak_model("smollm2-135m"), ns.reps, work)),
            ("generate", lambda: bench_generate("smollm2-135m", profile.weak_model("smollm2-135m"), ns.reps, work)),
            ("flare-logprobs", lambda: bench_flare_logprobs(ns.reps, ns.threads)),
            ("dropout-smollm2", lambda: bench_dropout("smollm2-135m", profile.weak_model("smollm2-135m"), ns.reps, work)),
            ("dropout-gemma", lambda: bench_dropout("gemma3-270m", profile.weak_model("gemma3-270m"), ns.reps, work)),
        ]
        for key, fn in plan:
            if key in ns.skip:
                continue
            t0 = time.perf_counter()
            results.append(fn())
            print(f"[{key}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    table = _table(results)
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average_at_end": list(os.getloadavg())},
        "versions": _versions(),
        "settings": {"reps": ns.reps, "profile": "tiny",
                     "statistic": "fastest of the alternating repetitions (every timing, min and median kept)",
                     "step": "Trainer.training_step (forward + backward, no optimizer update)",
                     "note": "the CPU may have been shared with other jobs: compare ratios"},
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
        "table_markdown": table,
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table)
    print(f"\n{record['machine']['cpu_count']} CPUs, {record['machine']['torch_threads']} torch thread(s), "
          f"{record['wall_s']} s; written to {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
