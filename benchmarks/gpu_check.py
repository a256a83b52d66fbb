"""The GPU check: the project's CUDA paths on one GPU, in a few minutes, with numbers.

What it runs, each part catching and recording its own failure (the JSON and the Markdown
table are rewritten after every part, so a run stopped by a time limit keeps what it measured):

``env``
    GPU name, memory, driver, CUDA and library versions; the bf16 matmul peak
    (8192^3 ``torch.matmul``, mean of 10 after 3 warm-ups) as the reference for the rest.
``train``
    For each model below, the project's own ``cowest.train.sft`` then ``cowest.train.dpo``
    (real TRL trainers, ``cowest.weak.load_weak``: bf16 LoRA, or 4-bit NF4 QLoRA through
    bitsandbytes), for a few optimizer steps each (``trl: {max_steps: N}``, the profile's
    pass-through). Per run: seconds per optimizer step (median of the steps after the first,
    timed with CUDA synchronisation), tokens per second, peak GPU memory
    (``torch.cuda.max_memory_allocated``), first and last loss.
``generate``
    Drafts through ``cowest.weak.generate`` with the SFT adapter merged (bf16), the tiny
    profile's batch size: generated tokens per second (tokens counted by the tokenizer on
    each completion).

The models are those of the offline profiles plus the paper's weak model, by architecture:

=================  ==========================================  ==========================
name               architecture (config)                       settings (profile, weak model)
=================  ==========================================  ==========================
smollm2-135m       the offline weak model's own config          smoke / tiny
gemma3-270m        the offline Gemma-3-270M config              smoke
qwen2.5-1.5b       Qwen2.5-Coder-1.5B (the largest offline      smoke's smollm2-135m, 4-bit
                   model; public config values below)
llama3-8b          Meta-Llama-3-8B (the paper's weak model;     paper: QLoRA r16, seven projections,
                   public config values below)                  batch 8 x 2, max_length 768/1024
=================  ==========================================  ==========================

When a model folder with real weights is there (``$COWEST_HOME/models/<name>-hf``), it is
used; otherwise the model is built from its config with random weights (bf16, on the GPU)
and saved to a temporary folder. Step time, throughput and memory do not depend on the
weights' values, but losses of random weights mean nothing, and the table says which runs
used random weights. The training texts are synthetic prompt-completion rows of the
lengths stated in the JSON (prompt and completion tokens per row).

The smoke profile itself (all notebooks) needs the offline models (about 2 GB of GGUF and
safetensors files) and llama.cpp for the strong model; run it on a GPU machine with
``./reproduce.sh --profile smoke``. This check covers the weak model's CUDA paths, where the
GPU changes what runs (bf16, 4-bit, activation checkpointing, CUDA generation).

Usage (see ``benchmarks/gpu_check.sh`` for the wrapper that prepares a bare machine)::

    python benchmarks/gpu_check.py [--out results/benchmarks] [--models smollm2-135m ...]
                                   [--quick] [--budget-s 420]

``--quick`` (for a CPU test of the script itself): SmolLM2 only, bf16/float32 LoRA only,
two steps, four prompts. ``--budget-s`` skips the models that remain once the run has used
that many seconds (recorded as skipped).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cowest import train  # noqa: E402
from cowest.config import load_profile  # noqa: E402
from cowest.paths import home  # noqa: E402
from cowest.weak import end_token, generate, load_tokenizer, load_weak, render_prompt  # noqa: E402

#: Public config values of the two architectures whose weights are not offline here.
ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": {  # Qwen/Qwen2.5-Coder-1.5B-Instruct config.json
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
        "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
        "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
    },
    "llama3-8b": {  # meta-llama/Meta-Llama-3-8B-Instruct config.json
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
    },
}

#: name -> (profile, weak model in that profile, quantizations to run, prompt/completion tokens)
PLAN: dict[str, tuple[str, str, tuple[str, ...], tuple[int, int]]] = {
    "smollm2-135m": ("smoke", "smollm2-135m", ("none", "4bit"), (72, 40)),
    "qwen2.5-1.5b": ("smoke", "smollm2-135m", ("4bit",), (72, 40)),
    "llama3-8b": ("paper", "llama3-8b", ("4bit",), (400, 200)),
    "gemma3-270m": ("smoke", "gemma3-270m", ("none", "4bit"), (72, 40)),
}
STEPS = 6  # optimizer steps per training run; the first is not timed

WORDS = ("the river town keeps a ledger of every boat that passes its bridge and the clerk writes each "
         "name twice so that nothing is lost when the water rises in spring").split()


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _text(tok: Any, n_tokens: int, offset: int) -> str:
    """Plain words, cut to n_tokens tokens of this tokenizer."""
    words = [WORDS[(offset + i) % len(WORDS)] for i in range(n_tokens * 2)]
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"][:n_tokens]
    return tok.decode(ids)


def make_rows(tok: Any, n: int, lengths: tuple[int, int]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """SFT rows and DPO pairs of the given prompt/completion token lengths."""
    p_len, c_len = lengths
    rows, pairs = [], []
    for i in range(n):
        prompt = render_prompt(tok, _text(tok, p_len, i))
        rows.append({"prompt": prompt, "completion": _text(tok, c_len, 7 * i + 3)})
        pairs.append({"prompt": prompt, "chosen": _text(tok, c_len, 5 * i + 1),
                      "rejected": _text(tok, c_len, 11 * i + 2)})
    return rows, pairs


def gpu_info() -> dict[str, Any]:
    """`cowest.execute.accelerator()` (what a run's manifest records), plus bf16 support and SMs."""
    from cowest.execute import accelerator

    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), **accelerator()}
    if torch.cuda.is_available():
        info.update({"multiprocessors": torch.cuda.get_device_properties(0).multi_processor_count,
                     "bf16": torch.cuda.is_bf16_supported()})
    return info


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            out[name] = f"missing ({type(exc).__name__})"
    return out


def matmul_peak(n: int = 8192, reps: int = 10) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    s = (time.perf_counter() - t0) / reps
    return {"n": n, "seconds": s, "tflops_bf16": round(2 * n**3 / s / 1e12, 1)}


def model_folder(name: str, work: Path, tokenizer_dir: Path) -> tuple[Path, bool]:
    """(folder, random_weights): real weights when offline here, else random weights of the config."""
    real = home() / "models" / f"{name}-hf"
    if (real / "model.safetensors").exists():
        return real, False
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name in ARCH_CONFIGS:
        spec = dict(ARCH_CONFIGS[name])
        cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    else:
        cfg = AutoConfig.from_pretrained(str(real))
    target = work / name
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(str(target))
    del model
    tok_src = real if (real / "tokenizer.json").exists() else tokenizer_dir
    AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(str(target))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return target, True


class StepTimer:
    """A TrainerCallback that times optimizer steps (CUDA-synchronised)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
                _sync()
                timer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                _sync()
                timer.steps.append(time.perf_counter() - timer._t)

        self.steps: list[float] = []
        self._t = 0.0
        self.callback = _CB()

    def attach(self, trainer: Any) -> None:
        trainer.add_callback(self.callback)

    def summary(self, tokens_per_step: int) -> dict[str, Any]:
        timed = self.steps[1:] or self.steps
        s = statistics.median(timed) if timed else float("nan")
        return {"steps": len(self.steps), "step_s": [round(x, 4) for x in self.steps],
                "seconds_per_step": round(s, 4), "tokens_per_step": tokens_per_step,
                "tokens_per_s": round(tokens_per_step / s, 1) if s == s and s > 0 else None}


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _tokens(tok: Any, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def run_model(name: str, work: Path, tokenizer_dir: Path, quick: bool) -> dict[str, Any]:
    profile_name, weak_name, quants, lengths = PLAN[name]
    profile = load_profile(profile_name)
    base_spec = next(w for w in profile.weak_models if w.name == weak_name)
    t0 = time.perf_counter()
    folder, random_weights = model_folder(name, work, tokenizer_dir)
    out: dict[str, Any] = {"profile": profile_name, "weak_spec": weak_name, "random_weights": random_weights,
                           "prepare_s": round(time.perf_counter() - t0, 1), "runs": {}}
    tok = load_tokenizer(folder)
    steps = 2 if quick else STEPS
    for quant in (("none",) if quick else quants):
        rec: dict[str, Any] = {}
        out["runs"][quant] = rec
        try:
            sft_spec = base_spec.sft.model_copy(update={"epochs": 1, "trl": {"max_steps": steps}})
            dpo_spec = base_spec.dpo.model_copy(update={"epochs": 1, "trl": {"max_steps": steps}})
            spec = base_spec.model_copy(update={"quantization": quant, "sft": sft_spec, "dpo": dpo_spec})
            n_rows = max(sft_spec.batch_size * sft_spec.grad_accum, dpo_spec.batch_size * dpo_spec.grad_accum) * steps
            rows, pairs = make_rows(tok, n_rows, lengths)
            sft_tokens = _tokens(tok, [r["prompt"] + r["completion"] for r in rows[: sft_spec.batch_size]])
            dpo_tokens = _tokens(tok, [p["prompt"] + p[k] for p in pairs[: dpo_spec.batch_size]
                                       for k in ("chosen", "rejected")])
            adapter = work / f"{name}-{quant}-sft"
            timer = StepTimer()
            _peak_reset()
            log(f"{name} {quant}: SFT {steps} steps")
            slog = train.sft(folder, rows, adapter, weak=spec, seed=0, on_trainer=timer.attach)
            rec["sft"] = {**timer.summary(sft_tokens * sft_spec.grad_accum), "peak_gib": _peak_gib(),
                          "first_loss": slog["first_loss"], "last_loss": slog["last_loss"],
                          "batch": f"{sft_spec.batch_size} x {sft_spec.grad_accum}",
                          "max_length": sft_spec.max_length}
            timer = StepTimer()
            _peak_reset()
            log(f"{name} {quant}: DPO {steps} steps")
            dlog = train.dpo(folder, adapter, pairs, work / f"{name}-{quant}-dpo", weak=spec, seed=0,
                             on_trainer=timer.attach)
            rec["dpo"] = {**timer.summary(dpo_tokens * dpo_spec.grad_accum), "peak_gib": _peak_gib(),
                          "first_loss": dlog["first_loss"], "last_loss": dlog["last_loss"],
                          "batch": f"{dpo_spec.batch_size} pairs x {dpo_spec.grad_accum}",
                          "max_length": dpo_spec.max_length}
            if quant == "none" or name != "llama3-8b":
                rec["generate"] = gen_speed(folder, adapter, quant, base_spec, tok, quick)
        except Exception as exc:  # noqa: BLE001 - one run's failure is a result, not the end
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc()[-3000:]
            log(f"{name} {quant}: FAILED {rec['error']}")
    return out


def gen_speed(folder: Path, adapter: Path, quant: str, spec: Any, tok: Any, quick: bool) -> dict[str, Any]:
    tiny = load_profile("tiny")
    tiny_spec = next((w for w in tiny.weak_models if w.name == spec.name), spec)
    n = 4 if quick else 2 * tiny_spec.gen_batch_size
    prompts = [render_prompt(tok, _text(tok, 60, i)) for i in range(n)]
    _peak_reset()
    model, tk = load_weak(folder, quantization=quant, adapter=adapter)
    generate(model, tk, prompts[:2], max_new_tokens=4, seed=0, batch_size=2)  # warm-up
    _sync()
    t0 = time.perf_counter()
    outs = generate(model, tk, prompts, max_new_tokens=tiny_spec.max_new_tokens, seed=0,
                    batch_size=tiny_spec.gen_batch_size)
    _sync()
    s = time.perf_counter() - t0
    toks = _tokens(tk, [o[0] for o in outs])
    del model
    return {"prompts": n, "batch_size": tiny_spec.gen_batch_size, "max_new_tokens": tiny_spec.max_new_tokens,
            "merged": quant == "none", "seconds": round(s, 2), "generated_tokens": toks,
            "tokens_per_s": round(toks / s, 1), "peak_gib": _peak_gib()}


def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt) if isinstance(x, (int, float)) else str(x)


def render_markdown(rec: dict[str, Any]) -> str:
    env = rec.get("env", {})
    g, v = env.get("gpu", {}), env.get("versions", {})
    lines = [
        "# GPU check", "",
        f"Date {rec['date']}, commit {rec.get('commit', '?')}. GPU: {g.get('gpu', 'none')} "
        f"({_f(g.get('memory_gib'), '.0f')} GiB), driver {g.get('driver', '-')}, CUDA {g.get('cuda', '-')}. "
        + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", "",
        f"bf16 matmul peak: {_f(env.get('matmul', {}).get('tflops_bf16'), '.0f')} TFLOP/s.", "",
        "Training: the project's `cowest.train.sft` / `dpo` (real TRL trainers) for a few optimizer steps; "
        "seconds per optimizer step are the median after the first step. Random-weight runs measure speed "
        "and memory only (their losses mean nothing).", "",
        "| model | weights | quant | SFT s/step | SFT tok/s | SFT peak GiB | DPO s/step | DPO tok/s "
        "| DPO peak GiB | gen tok/s | gen peak GiB | error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in rec.get("models", {}).items():
        if "skipped" in m or "error" in m:
            lines.append(f"| {name} | - | - | | | | | | | | | {m.get('skipped') or m.get('error')} |")
            continue
        for quant, r in m["runs"].items():
            s, d, gen = r.get("sft", {}), r.get("dpo", {}), r.get("generate", {})
            lines.append(
                f"| {name} | {'random' if m['random_weights'] else 'real'} | {quant} | "
                f"{_f(s.get('seconds_per_step'), '.3f')} | {_f(s.get('tokens_per_s'), '.0f')} | {_f(s.get('peak_gib'))} | "
                f"{_f(d.get('seconds_per_step'), '.3f')} | {_f(d.get('tokens_per_s'), '.0f')} | {_f(d.get('peak_gib'))} | "
                f"{_f(gen.get('tokens_per_s'), '.0f')} | {_f(gen.get('peak_gib'))} | {r.get('error', '')} |")
    lines += ["", f"Total {rec.get('total_s', '?')} s. Batch shapes, lengths and every step time: "
              "`gpu_check.json`.", ""]
    for key in ("commit_note", "device_call"):
        if key in rec:
            lines += [f"{key.replace('_', ' ').capitalize()}: {json.dumps(rec[key])[1:-1]}", ""]
    return "\n".join(lines)


def write(rec: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(render_markdown(rec))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks",
                    help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--models", nargs="+", choices=list(PLAN), default=list(PLAN), help="models to run")
    ap.add_argument("--quick", action="store_true", help="a CPU test of the script: SmolLM2, LoRA, 2 steps")
    ap.add_argument("--budget-s", type=float, default=420, help="skip the remaining models after this long")
    ap.add_argument("--tokenizer", type=Path, default=home() / "models" / "smollm2-135m-hf",
                    help="tokenizer for architectures whose own tokenizer is not offline here")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    rec: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "commit": os.environ.get("COWEST_COMMIT", commit), "argv": sys.argv[1:], "models": {}}
    log("environment")
    rec["env"] = {"gpu": gpu_info(), "versions": versions(), "platform": platform.platform()}
    try:
        rec["env"]["matmul"] = matmul_peak()
    except Exception as exc:  # noqa: BLE001
        rec["env"]["matmul"] = {"error": f"{type(exc).__name__}: {exc}"}
    write(rec, a.out)
    models = ["smollm2-135m"] if a.quick else a.models
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in models:
            if time.perf_counter() - t_start > a.budget_s:
                rec["models"][name] = {"skipped": f"time budget of {a.budget_s:.0f} s used"}
                continue
            try:
                rec["models"][name] = run_model(name, Path(tmp), a.tokenizer, a.quick)
            except Exception as exc:  # noqa: BLE001
                rec["models"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc()[-3000:]}
                log(f"{name}: FAILED {rec['models'][name]['error']}")
            rec["total_s"] = round(time.perf_counter() - t_start, 1)
            write(rec, a.out)
    rec["total_s"] = round(time.perf_counter() - t_start, 1)
    write(rec, a.out)
    print(render_markdown(rec))
    failed = any("error" in m or any("error" in r for r in m.get("runs", {}).values())
                 for m in rec["models"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
