"""The benchmark suite: what this machine does with the project's own code paths, in one run.

Parts (``--only`` selects some; each one catches and records its own failure):

``matmul``
    The machine's float32 matmul peak at the current torch thread count: ``torch.matmul`` of
    square matrices (1024, 1536, 2048; best of 5 each, after a warm-up), ``2 n^3 / s``. The
    reference for the training part's GFLOPS.
``generation``
    Weak-model generation throughput. The project's path (``cowest.weak.load_weak(...,
    quantization="none")`` + ``cowest.weak.generate``: transformers, float32, batched, greedy,
    the tiny profile's ``max_new_tokens`` and ``gen_batch_size``) against llama.cpp on the
    same model (the GGUF the float32 folder was converted from), one prompt at a time,
    greedy, in generated tokens/s. The prompts are the tiny profile's weak-model prompts
    (``weak_<format>`` template, chat template) for test questions of its tasks. Tokens are
    counted the same way for both: the Hugging Face tokenizer on each completion's text (the
    end-of-turn token excluded). Target: project >= llama.cpp.
``training``
    One SFT step and one DPO step of the tiny profile's weak model (SmolLM2-135M, the tiny
    profile's LoRA shape), LoRA (float32) and QLoRA (NF4 4-bit base, bitsandbytes), built by
    ``benchmarks/levers.py`` as ``cowest.train`` builds them (compact LM head on). A step is
    ``Trainer.training_step``: forward + backward, no optimizer update (the same weights every
    repetition); one untimed warm-up, then the best of the repetitions. Reports tokens/s and
    GFLOPS from the FLOP model below, as a fraction of the ``matmul`` peak (which is run first).
``strong``
    Strong-model calls. Delegated to ``benchmarks/strong_layout.py`` when that script exists
    (a subprocess that dies with the suite; ``--out`` a temporary JSON, which is embedded in
    suite.json with the table the script prints; in a quick run ``--quick`` if the script
    has it, else ``--calls 4 --reps 1``). Otherwise, when the delegation fails, or with
    ``--strong-builtin``: a minimal version here. One local llama.cpp server for the tiny
    profile's strong model, built as ``Pipeline.strong`` builds it (``LocalServer.from_spec``
    + ``StrongClient.from_spec``), the strong-alone prompts of test questions sent through
    ``StrongClient.complete_many`` at concurrency 1, 2 and 4 (each with a fresh request
    cache) and again from the warm cache of the last one. Prompt tokens sent (the server's
    usage counts) vs processed (what llama.cpp evaluated after reusing the KV prefix of its
    previous request: its verbose ``prompt eval time = ... / N tokens`` log lines).
``notebooks``
    ``python -m cowest run --profile smoke`` twice into a temporary results root
    (``COWEST_RESULTS``): cold, then with every stage and strong call cached. Per notebook:
    seconds, stages built and requests sent (from the run's ``manifest.json``) and the peak
    memory of the runner's process tree (the runner, the papermill kernels, the llama.cpp
    servers), polled from ``/proc`` every 0.5 s: the sum of the RSS of every process of the
    tree (shared pages count once per process, so an upper bound) and the sum of their PSS.
    ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` is recorded too (a coarse bound: the
    largest single descendant so far). Skipped by ``--quick``; about 25-30 minutes on 2 cores.

FLOP model (training; written into the JSON and the table)::

    N      matmul weights of the decoder blocks: L * (2 d d_att + 2 d d_kv + 3 d f)
           (attention q, o and k, v; gated MLP); embeddings are lookups, not matmuls
    V d    the LM head (tied to the embedding in SmolLM2), applied to the S scored positions
           (the compact LM head projects only the completion positions)
    T      padded positions (rows x padded length; padding is computed too)
    Σs²    rows x padded length²: the attention products QKᵀ and AV cost 4 L d_att Σs²
    forward F = 2 N T + 2 V d S + 4 L d_att Σs² (+ 2 N_lora T)
    full fine-tune step  = 3 F: 6 N T + 6 V d S + 12 L d_att Σs²       (for comparison)
    LoRA SFT step        = 4 N T + 4 V d S + 12 L d_att Σs² + 6 N_lora T
                           (frozen base: forward + input-gradient backward = 2 F; attention
                           products are activation x activation, so their backward is 2x;
                           the adapters: forward + input and weight gradients)
    LoRA DPO step        = LoRA SFT on the 2B chosen+rejected rows + the reference forward
                           2 N T + 2 V d S + 4 L d_att Σs² + 2 N_lora T
    QLoRA                = the same matmul FLOPs (the NF4 dequantisation is overhead)

Usage::

    .venv/bin/python benchmarks/suite.py [--quick] [--only PART ...] [--threads N] [--out DIR]
                                         [--strong-builtin] [--notebook-profile smoke]

``--threads`` sets torch's threads and llama.cpp's in the generation part (default: torch's
default, the cores it sees). ``--quick`` shrinks every part (matmul 2 sizes x 3; 8 prompts
once; training batches of 4 rows / 2 pairs, one timed step; 4 strong prompts) and skips
``notebooks`` (unless named in ``--only``): about 3 minutes on 2 idle cores. A full run
takes about 35-40 minutes there, most of it the two notebook runs. Writes ``DIR/suite.json`` (default ``results/benchmarks/``: everything measured,
every timing) and ``DIR/README.md`` (the tables, the machine, the versions, the date) after
every part, so an interrupted run keeps what it measured. Timings depend on what else runs
on the machine (the load average at start and end is recorded).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
DEFAULT_OUT = REPO / "results" / "benchmarks"
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

PARTS = ("matmul", "generation", "training", "strong", "notebooks")
#: parts another part needs (run first even when not named in --only)
NEEDS = {"training": ("matmul",)}

def _versions() -> dict[str, str]:
    from cowest.execute import versions  # the manifest's list of packages

    return versions()


FLOP_SYMBOLS = ("N = matmul weights of the decoder blocks, L*(2*d*d_att + 2*d*d_kv + 3*d*f); "
                "V*d = LM head, on the S scored (completion) positions only (compact head); "
                "T = padded positions (rows x padded length); Σs² = rows x padded length²; "
                "N_lora = trainable LoRA weights")
FLOP_FORMULAS = {
    "forward": "F = 2*N*T + 2*V*d*S + 4*L*d_att*Σs² (+ 2*N_lora*T)",
    "full_sft": "6*N*T + 6*V*d*S + 12*L*d_att*Σs² (full fine-tune, for comparison)",
    "lora_sft": "4*N*T + 4*V*d*S + 12*L*d_att*Σs² + 6*N_lora*T (frozen base: forward + input-grad backward)",
    "lora_dpo": "lora_sft on the 2B chosen+rejected rows + reference forward 2*N*T + 2*V*d*S + 4*L*d_att*Σs² "
                "+ 2*N_lora*T",
    "qlora": "same matmul FLOPs as LoRA (NF4 dequantisation not counted)",
}


def log(msg: str) -> None:
    print(f"[suite] {msg}", flush=True)


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    threads: int
    matmul_sizes: tuple[int, ...]
    matmul_reps: int
    gen_prompts: int
    gen_reps: int
    train_reps: int
    sft_rows: int | None  # None: levers.py's 8 rows (the tiny profile's SFT batch size)
    dpo_pairs: int | None  # None: the tiny profile's DPO batch size
    strong_prompts: int
    strong_levels: tuple[int, ...]
    strong_timeout_s: float
    notebook_profile: str
    notebook_timeout_s: float
    strong_builtin: bool = False  # the built-in strong measurement even when strong_layout.py exists


def make_settings(quick: bool, threads: int, notebook_profile: str = "smoke",
                  notebook_timeout_s: float = 3600.0, strong_builtin: bool = False) -> Settings:
    if quick:
        return Settings(True, threads, (1024, 2048), 3, 8, 1, 1, 4, 2, 4, (1, 2, 4), 600.0,
                        notebook_profile, notebook_timeout_s, strong_builtin)
    return Settings(False, threads, (1024, 1536, 2048), 5, 80, 2, 3, None, None, 8, (1, 2, 4), 3600.0,
                    notebook_profile, notebook_timeout_s, strong_builtin)


def resolve_parts(only: Sequence[str] | None, quick: bool) -> list[str]:
    """The parts to run, in suite order: `only` (default all) plus what they need; `notebooks`
    is left out of a quick run unless named."""
    wanted = set(only) if only else set(PARTS) - ({"notebooks"} if quick else set())
    for p in list(wanted):
        wanted.update(NEEDS.get(p, ()))
    unknown = wanted - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}; known: {', '.join(PARTS)}")
    return [p for p in PARTS if p in wanted]


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = round(int(rest.split()[0]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError):
        pass
    return out


def machine_info() -> dict[str, Any]:
    import torch

    mem = _meminfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(), "memory_gib": mem.get("MemTotal"),
        "memory_available_gib": mem.get("MemAvailable"), "platform": platform.platform(),
        "load_average": list(os.getloadavg()), "cuda": torch.cuda.is_available(),
    }




# --------------------------------------------------------------------------- pure parts


def matmul_peak(sizes: Sequence[int] = (1024, 1536, 2048), reps: int = 5) -> dict[str, Any]:
    """float32 ``torch.matmul`` of square matrices at the current thread count: the best
    GFLOPS (``2 n^3`` per product) over `sizes`, each the best of `reps` after a warm-up."""
    import torch

    by_size = {}
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=g, dtype=torch.float32)
        b = torch.randn(n, n, generator=g, dtype=torch.float32)
        out = torch.empty(n, n, dtype=torch.float32)
        torch.matmul(a, b, out=out)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            times.append(time.perf_counter() - t0)
        best = min(times)
        by_size[str(n)] = {"times_s": times, "best_s": best, "gflops": 2 * n**3 / best / 1e9}
        del a, b, out
    best_gflops = max(v["gflops"] for v in by_size.values())
    return {"dtype": "float32", "threads": torch.get_num_threads(), "reps": reps, "by_size": by_size,
            "peak_gflops": best_gflops,
            "method": "torch.matmul(a, b, out=c), square float32, best of reps after one warm-up; 2*n^3 FLOPs"}


def decoder_shape(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The matmul shape of a Llama-style decoder (gated MLP, grouped-query attention) from its
    Hugging Face config: ``n_body`` = L * (2 d d_att + 2 d d_kv + 3 d f)."""
    d = int(cfg["hidden_size"])
    f = int(cfg["intermediate_size"])
    n_layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or d // heads)
    d_att, d_kv = heads * head_dim, kv * head_dim
    return {"d_model": d, "d_ff": f, "n_layers": n_layers, "d_att": d_att, "d_kv": d_kv,
            "vocab": int(cfg["vocab_size"]), "n_body": n_layers * (2 * d * d_att + 2 * d * d_kv + 3 * d * f)}


def train_step_flops(method: str, shape: Mapping[str, int], *, n_lora: int, padded_tokens: int,
                     scored: int, seq_sq_sum: int) -> dict[str, float]:
    """FLOPs of one training step (see the module docstring): ``method`` is ``lora_sft``,
    ``lora_dpo`` or ``full_sft``. Returns the total and its terms."""
    n, v_d = shape["n_body"], shape["vocab"] * shape["d_model"]
    att = 4 * shape["n_layers"] * shape["d_att"] * seq_sq_sum  # one forward of QK^T and AV
    fwd = {"body": 2 * n * padded_tokens, "head": 2 * v_d * scored, "attention": att,
           "lora": 2 * n_lora * padded_tokens}
    if method == "full_sft":
        terms = {"body": 3 * fwd["body"], "head": 3 * fwd["head"], "attention": 3 * fwd["attention"], "lora": 0}
    elif method in ("lora_sft", "lora_dpo"):
        terms = {"body": 2 * fwd["body"], "head": 2 * fwd["head"], "attention": 3 * fwd["attention"],
                 "lora": 3 * fwd["lora"]}
        if method == "lora_dpo":  # + the reference model's forward on the same rows
            terms = {k: terms[k] + fwd[k] for k in terms}
    else:
        raise ValueError(f"unknown method {method!r}")
    return {"total": float(sum(terms.values())), **{k: float(x) for k, x in terms.items()}}


_PROMPT_EVAL = re.compile(r"prompt eval time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*tokens")
_PREFIX_HIT = re.compile(r"Llama\.generate:\s*(\d+)\s*prefix-match hit")


def parse_llama_log(text: str) -> dict[str, Any]:
    """What a verbose llama.cpp server log says about prompt processing: per request, the
    tokens it evaluated (``prompt eval time = ... / N tokens``) and the prefix it reused."""
    evals = [int(m.group(2)) for m in _PROMPT_EVAL.finditer(text)]
    hits = [int(m.group(1)) for m in _PREFIX_HIT.finditer(text)]
    return {"requests_logged": len(evals), "prompt_tokens_processed": sum(evals),
            "prompt_eval_ms": sum(float(m.group(1)) for m in _PROMPT_EVAL.finditer(text)),
            "prefix_hits": len(hits), "prefix_tokens_reused": sum(hits),
            "full_prompt_cached": text.count("full prompt already cached")}


def process_tree(root: int) -> list[int]:
    """`root` and every descendant process (by parent id, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tree_memory(root: int) -> dict[str, int]:
    """Summed RSS and PSS (bytes) of `root`'s process tree, and how many processes it has."""
    rss = pss = n = 0
    for pid in process_tree(root):
        try:
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
            n += 1
        except (OSError, ValueError, IndexError):
            continue
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            pass
    return {"rss_bytes": rss, "pss_bytes": pss, "processes": n}


class TreeMemoryMonitor:
    """Polls :func:`tree_memory` of a process tree every `interval_s` in a thread; keeps the
    peak per label (the caller sets the label, e.g. the notebook being rendered)."""

    def __init__(self, root: int, interval_s: float = 0.5) -> None:
        self.root, self.interval_s = root, interval_s
        self.label = "(start)"
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-memory")

    def _run(self) -> None:
        while not self._stop.is_set():
            m = tree_memory(self.root)
            self.samples += 1
            peak = self.peaks.setdefault(self.label, {"rss_bytes": 0, "pss_bytes": 0, "processes": 0})
            for k in peak:
                peak[k] = max(peak[k], m[k])
            self._stop.wait(self.interval_s)

    def start(self) -> "TreeMemoryMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def overall(self) -> dict[str, int]:
        return {k: max((p[k] for p in self.peaks.values()), default=0)
                for k in ("rss_bytes", "pss_bytes", "processes")}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: SIGTERM the child when the suite dies (a killed suite leaves no benchmark running)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def popen_tied(cmd: Sequence[str], **kw: Any) -> "subprocess.Popen[str]":
    """``subprocess.Popen`` of a child that dies with the suite (Linux)."""
    if sys.platform.startswith("linux"):
        kw.setdefault("preexec_fn", _die_with_parent)
    return subprocess.Popen(list(cmd), **kw)


def _wait_or_stop(proc: "subprocess.Popen[str]", timeout_s: float) -> tuple[int, bool]:
    """Wait for `proc`; past `timeout_s` terminate it (then kill). Returns (code, timed_out)."""
    try:
        return proc.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            return proc.wait(timeout=30), True
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), True
    except BaseException:
        proc.terminate()
        raise


def run_part(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one part; a failure is recorded (error, traceback tail), never raised."""
    log(f"{name}: start")
    t0 = time.perf_counter()
    try:
        res = dict(fn())
        res.setdefault("status", "ok")
    except Exception as e:  # noqa: BLE001 - the suite never dies on one part
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()[-4000:]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"{name}: {res['status']} in {res['seconds']:.0f} s" + (f" ({res['error']})" if "error" in res else ""))
    return res


# --------------------------------------------------------------------------- heavy parts


def _tiny_prompts(profile: Any, n: int, render: Callable[[Any, Any], str]) -> list[str]:
    """`n` prompts for test questions of the profile's tasks, taken in turn from each task."""
    from cowest.tasks import get_task

    per_task = -(-n // len(profile.tasks))
    lists = []
    for spec in profile.tasks:
        task = get_task(spec.name, **spec.params)
        lists.append([render(task, e) for e in task.load("test", per_task, profile.seed)])
    out = [p for group in zip(*lists) for p in group]
    return out[:n]


def part_generation(s: Settings) -> dict[str, Any]:
    from cowest import assets, prompts
    from cowest.config import load_profile
    from cowest.weak import generate, load_weak, render_prompt

    profile = load_profile("tiny")
    weak = profile.weak
    fmt = profile.collab.format
    model, tok = load_weak(assets.hf_folder(weak.model), quantization="none")
    ps = _tiny_prompts(profile, s.gen_prompts,
                       lambda t, e: render_prompt(tok, prompts.render(f"weak_{fmt}", question=t.render_question(e))))
    prompt_tokens = [len(tok(p)["input_ids"]) for p in ps]

    def count(texts: list[str]) -> int:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    log(f"generation: project path, {len(ps)} prompts, batch {weak.gen_batch_size}, <= {weak.max_new_tokens} tokens")
    generate(model, tok, ps[:2], max_new_tokens=4, batch_size=2, seed=0)  # warm-up
    times, outs = [], None
    for _ in range(s.gen_reps):
        t0 = time.perf_counter()
        out = generate(model, tok, ps, max_new_tokens=weak.max_new_tokens, batch_size=weak.gen_batch_size, seed=0)
        times.append(time.perf_counter() - t0)
        outs = outs or [o[0] for o in out]
    assert outs is not None
    proj_tokens = count(outs)
    project = {"path": "cowest.weak.generate: transformers, float32, batched, greedy", "times_s": times,
               "best_s": min(times), "generated_tokens": proj_tokens, "tokens_per_s": proj_tokens / min(times)}
    log(f"generation: project {proj_tokens} tokens in {min(times):.1f} s = {project['tokens_per_s']:.1f} tokens/s")
    del model
    gc.collect()

    from llama_cpp import Llama

    gguf = assets.gguf_path(weak.model)
    llm = Llama(model_path=str(gguf), n_threads=s.threads, n_threads_batch=s.threads, n_ctx=1024, verbose=False)
    kw = dict(max_tokens=weak.max_new_tokens, temperature=0.0, repeat_penalty=1.0)
    llm.create_completion(ps[0], max_tokens=4, temperature=0.0)  # warm-up
    l_times, per_prompt, l_outs, reported = [], [], None, 0
    for _ in range(s.gen_reps):
        texts, each = [], []
        t0 = time.perf_counter()
        for p in ps:
            t1 = time.perf_counter()
            r = llm.create_completion(p, **kw)
            each.append(time.perf_counter() - t1)
            texts.append(r["choices"][0]["text"])
            reported += int(r["usage"]["completion_tokens"])
        l_times.append(time.perf_counter() - t0)
        per_prompt.append(each)
        l_outs = l_outs or texts
    assert l_outs is not None
    del llm
    gc.collect()
    l_tokens = count(l_outs)
    llama = {"path": f"llama_cpp.Llama.create_completion, {gguf.name}, one prompt at a time, greedy, "
                     f"n_threads={s.threads}", "times_s": l_times, "best_s": min(l_times), "per_prompt_s": per_prompt,
             "generated_tokens": l_tokens, "completion_tokens_reported": reported // s.gen_reps,
             "tokens_per_s": l_tokens / min(l_times)}
    log(f"generation: llama.cpp {l_tokens} tokens in {min(l_times):.1f} s = {llama['tokens_per_s']:.1f} tokens/s")
    ratio = project["tokens_per_s"] / llama["tokens_per_s"]
    return {"model": weak.model, "profile": "tiny", "prompts": len(ps), "prompt_tokens": prompt_tokens,
            "max_new_tokens": weak.max_new_tokens, "gen_batch_size": weak.gen_batch_size, "reps": s.gen_reps,
            "threads": s.threads, "project": project, "llama_cpp": llama, "ratio_project_over_llama": ratio,
            "target": "project >= llama.cpp", "meets_target": ratio >= 1.0,
            "identical_outputs": sum(a.strip() == b.strip() for a, b in zip(outs, l_outs)),
            "sample_outputs": {"project": outs[:2], "llama_cpp": l_outs[:2]},
            "note": "the float32 folder is the GGUF's weights dequantised; llama.cpp runs its quantised kernels, "
                    "so near-ties of greedy decoding can differ and the two paths can write different texts"}


def part_training(s: Settings, peak: Mapping[str, Any] | None) -> dict[str, Any]:
    import torch

    import levers
    from cowest.config import load_profile

    profile = load_profile("tiny")
    weak = profile.weak
    peak_gflops = (peak or {}).get("peak_gflops")
    rows = []
    for method, quant in (("sft", "none"), ("sft", "4bit"), ("dpo", "none"), ("dpo", "4bit")):
        label = f"{method.upper()} {'LoRA' if quant == 'none' else 'QLoRA (4-bit)'}"
        log(f"training: {label}: building")
        try:
            with tempfile.TemporaryDirectory(prefix="suite-train-") as tmp:
                if method == "sft":
                    trainer, batch, _, n = levers.build_sft_step(weak.model, weak, Path(tmp), quantization=quant,
                                                                 n_rows=s.sft_rows)
                    scored = int((batch["labels"][:, 1:] != -100).sum())
                else:
                    trainer, batch, _, n = levers.build_dpo_step(weak.model, weak, Path(tmp), quantization=quant,
                                                                 n_pairs=s.dpo_pairs)
                    scored = int((batch["completion_mask"][:, 1:] != 0).sum())
                model = trainer.model
                shape = decoder_shape(model.config.to_dict())
                n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
                counted = (sum(p.numel() for k, p in model.named_parameters()
                               if ".layers." in k and "lora_" not in k and p.dim() == 2) if quant == "none" else None)
                losses: dict[bool, list[float]] = {False: [], True: []}
                step = levers._step_timer(trainer, batch, losses)
                warm = step(True)  # compact LM head on, as cowest.train trains
                times = [step(True) for _ in range(s.train_reps)]
                n_rows_b, padded_len = (int(x) for x in batch["input_ids"].shape)
                real = int(batch["attention_mask"].sum())
                flops = train_step_flops(f"lora_{method}", shape, n_lora=n_lora, padded_tokens=n_rows_b * padded_len,
                                         scored=scored, seq_sq_sum=n_rows_b * padded_len**2)
                best = min(times)
                gflops = flops["total"] / best / 1e9
                row = {"step": method, "quantization": quant, "label": label,
                       "batch": n if method == "sft" else f"{n} pairs", "rows": n_rows_b, "padded_length": padded_len,
                       "real_tokens": real, "padded_tokens": n_rows_b * padded_len, "scored_positions": scored,
                       "warmup_s": warm, "times_s": times, "best_s": best, "tokens_per_s": real / best,
                       "loss": losses[True][0], "n_lora": n_lora, "shape": shape, "n_body_counted": counted,
                       "flops": flops, "flop_formula": FLOP_FORMULAS[f"lora_{method}"], "gflops": gflops,
                       "fraction_of_matmul_peak": gflops / peak_gflops if peak_gflops else None,
                       "dtype": str(next(p for p in model.parameters() if p.requires_grad).dtype)}
                log(f"training: {label}: best {best:.2f} s, {row['tokens_per_s']:.0f} tokens/s, {gflops:.1f} GFLOPS")
                del trainer, model, batch, step
        except Exception as e:  # noqa: BLE001 - one failed configuration keeps the others
            row = {"step": method, "quantization": quant, "label": label, "status": "failed",
                   "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            log(f"training: {label}: failed ({row['error']})")
        gc.collect()
        rows.append(row)
    return {"model": weak.model, "profile": "tiny", "lora": weak.lora.model_dump(), "threads": torch.get_num_threads(),
            "reps": s.train_reps, "statistic": "best of the timed repetitions after one warm-up",
            "step": "Trainer.training_step: forward + backward, no optimizer update (compact LM head on)",
            "matmul_peak_gflops": peak_gflops, "flop_symbols": FLOP_SYMBOLS, "flop_formulas": FLOP_FORMULAS,
            "rows": rows, "status": "ok" if all(r.get("status") != "failed" for r in rows) else "partial"}


def strong_layout_args(help_text: str, quick: bool, calls: int) -> list[str]:
    """Arguments for benchmarks/strong_layout.py from its ``--help``: in a quick run ``--quick``
    if it has one, else ``--calls <calls> --reps 1`` where it has those options."""
    if not quick:
        return []
    if re.search(r"--quick\b", help_text):
        return ["--quick"]
    args = []
    if re.search(r"--calls\b", help_text):
        args += ["--calls", str(calls)]
    if re.search(r"--reps\b", help_text):
        args += ["--reps", "1"]
    return args


def markdown_tail(text: str) -> str | None:
    """The Markdown table a script printed (from its first table row to the end), if any."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    return "\n".join(lines[first:]).strip() if first is not None else None


def _delegate_strong(script: Path, s: Settings) -> dict[str, Any]:
    """Run benchmarks/strong_layout.py as a subprocess and read the JSON it writes."""
    py = sys.executable
    help_text = subprocess.run([py, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=120).stdout
    cmd = [py, str(script.relative_to(REPO)), *strong_layout_args(help_text, s.quick, s.strong_prompts)]
    tmp = Path(tempfile.mkdtemp(prefix="suite-strong-"))
    out_json = None
    if re.search(r"--out\b", help_text):
        out_json = tmp / "strong_layout.json"
        cmd += ["--out", str(out_json)]
    log(f"strong: delegating: {shlex.join(cmd)}")
    started = time.time()
    with (tmp / "stdout.txt").open("w+") as out, (tmp / "stderr.txt").open("w+") as err:
        proc = popen_tied(cmd, cwd=REPO, stdout=out, stderr=err, text=True)
        rc, timed_out = _wait_or_stop(proc, s.strong_timeout_s)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    tail = (stdout + stderr)[-4000:]
    if timed_out:
        raise RuntimeError(f"{script.name} ran past {s.strong_timeout_s:g} s and was stopped: {tail[-800:]}")
    if rc != 0:
        raise RuntimeError(f"{script.name} exited with {rc}: {tail[-800:]}")
    candidates = [out_json] if out_json is not None else []
    candidates += [Path(m) for m in re.findall(r"(\S+\.json)\b", stdout + stderr)]
    candidates += sorted((p for p in (REPO / "results").rglob("*strong*.json") if p.stat().st_mtime >= started),
                         key=lambda p: p.stat().st_mtime, reverse=True)
    for c in candidates:
        c = c if c.is_absolute() else REPO / c
        if c.is_file():
            data = json.loads(c.read_text())
            table = data.get("table_markdown") if isinstance(data, dict) else None
            where = None if c.is_relative_to(tmp) else str(c)  # a temporary file: only embedded
            shutil.rmtree(tmp, ignore_errors=True)
            return {"delegated_to": str(script.relative_to(REPO)), "command": shlex.join(["python", *cmd[1:]]),
                    "json_path": where, "data": data, "table_markdown": table or markdown_tail(stdout),
                    "output_tail": tail}
    raise RuntimeError(f"{script.name} finished but no JSON it wrote was found; output: {tail[-800:]}")


def _strong_minimal(s: Settings) -> dict[str, Any]:
    import inspect

    from cowest.cache import RequestCache
    from cowest.client import StrongClient
    from cowest.collaborate import Collaborator
    from cowest.config import load_profile
    from cowest.server import LocalServer

    try:
        from cowest.ledger import Ledger
    except ImportError:  # before the ledger had a module of its own
        from cowest.cache import Ledger  # type: ignore[no-redef]

    profile = load_profile("tiny")
    spec = profile.strong
    levels: list[dict[str, Any]] = []
    new_api = "endpoint" in inspect.signature(StrongClient.from_spec).parameters
    with tempfile.TemporaryDirectory(prefix="suite-strong-") as tmp:
        tmpd = Path(tmp)
        server_log = tmpd / "server.log"
        srv = LocalServer.from_spec(spec, logits_all=False, log_path=server_log)
        srv.extra_args = ["--verbose", "True"]  # per-request prompt-eval lines in the log
        log(f"strong: starting a llama.cpp server for {spec.model} ({spec.n_threads} threads)")
        with srv:
            def client(tag: str) -> StrongClient:
                db = tmpd / f"cache-{tag}.sqlite"
                where = {"endpoint": srv} if new_api else {"base_url": srv.base_url, "server": srv}
                return StrongClient.from_spec(spec, cache=RequestCache(db), ledger=Ledger(db), **where)

            warm = client("warmup")
            warm.complete("Say OK.", stage="bench/warmup", max_tokens=4)
            collab: dict[str, Collaborator] = {}

            def render(task: Any, ex: Any) -> str:
                c = collab.setdefault(type(task).__name__, Collaborator(task, warm))
                return c.alone_prompt(ex)

            ps = _tiny_prompts(profile, s.strong_prompts, render)

            def measure(cl: StrongClient, tag: str, concurrency: int) -> dict[str, Any]:
                cl.concurrency = concurrency
                before = cl.ledger.totals()
                offset = server_log.stat().st_size
                t0 = time.perf_counter()
                comps = cl.complete_many(ps, stage=f"bench/{tag}")
                wall = time.perf_counter() - t0
                time.sleep(0.3)  # the server's last log lines
                with server_log.open("rb") as f:
                    f.seek(offset)
                    parsed = parse_llama_log(f.read().decode("utf-8", "replace"))
                after = cl.ledger.totals()
                sent = after["requests"] - before["requests"]
                ctoks = sum(c.completion_tokens for c in comps)
                res = {"setting": tag, "concurrency": concurrency, "calls": len(comps), "wall_s": wall,
                       "calls_per_s": len(comps) / wall, "completion_tokens": ctoks,
                       "completion_tokens_per_s": ctoks / wall,
                       "prompt_tokens_sent": sum(c.prompt_tokens for c in comps if not c.cached) if sent else 0,
                       "prompt_tokens_processed": parsed["prompt_tokens_processed"] if sent else 0,
                       "requests_sent": sent, "cache_hits": sum(c.cached for c in comps),
                       "mean_latency_s": sum(c.latency_s for c in comps) / len(comps),
                       "errors": sum(not c.ok for c in comps), "server_log": parsed}
                log(f"strong: {tag}: {len(comps)} calls in {wall:.1f} s ({res['calls_per_s']:.2f}/s), prompt tokens "
                    f"sent {res['prompt_tokens_sent']}, processed {res['prompt_tokens_processed']}")
                return res

            last = None
            for c in s.strong_levels:
                last = client(f"c{c}")
                levels.append(measure(last, f"concurrency {c}", c))
            if last is not None:
                levels.append(measure(last, "warm cache", last.concurrency))
        startup = srv.startup_s
    return {"delegated_to": None, "model": spec.model, "profile": "tiny", "server_threads": spec.n_threads,
            "n_ctx": spec.n_ctx, "max_tokens": spec.max_tokens, "mode": spec.mode, "servers": 1,
            "server_startup_s": startup, "prompts": len(ps), "levels": levels,
            "note": "one llama.cpp server answers one request at a time: concurrency only queues requests. "
                    "'processed' = prompt tokens llama.cpp evaluated after reusing the previous request's KV prefix "
                    "(its verbose 'prompt eval time = ... / N tokens' lines)"}


def part_strong(s: Settings) -> dict[str, Any]:
    script = BENCH / "strong_layout.py"
    if s.strong_builtin:
        log("strong: --strong-builtin: the built-in measurement (concurrency 1, 2, 4, warm cache)")
        return _strong_minimal(s)
    if not script.exists():
        log("strong: benchmarks/strong_layout.py not found: the minimal built-in measurement")
        res = _strong_minimal(s)
        res["note_delegation"] = "benchmarks/strong_layout.py did not exist at run time"
        return res
    try:
        return _delegate_strong(script, s)
    except Exception as e:  # noqa: BLE001 - fall back on the built-in measurement
        log(f"strong: delegation failed ({type(e).__name__}: {e}); the minimal built-in measurement instead")
        res = _strong_minimal(s)
        res["delegation_error"] = f"{type(e).__name__}: {e}"[:2000]
        return res


_RUNNING = re.compile(r"\[cowest\] \S+: running (\S+\.ipynb)")


def _run_notebooks_once(profile: str, results_root: Path, timeout_s: float, label: str,
                        extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """One ``python -m cowest run --profile <profile> [extra_args]`` into `results_root`, its
    process tree's memory polled; per notebook: the manifest's figures and the memory peaks."""
    env = {**os.environ, "COWEST_RESULTS": str(results_root)}
    cmd = [sys.executable, "-m", "cowest", "run", "--profile", profile, *extra_args]
    t0 = time.perf_counter()
    proc = popen_tied(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                      bufsize=1)
    mon = TreeMemoryMonitor(proc.pid).start()
    tail: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            del tail[:-200]
            m = _RUNNING.search(line)
            if m:
                mon.label = m.group(1)
            if line.startswith("[cowest]"):
                print(f"[suite] notebooks ({label}): {line.rstrip()}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rc, timed_out = _wait_or_stop(proc, timeout_s)
    if timed_out:
        tail.append(f"(stopped after {timeout_s:g} s)\n")
    reader.join(timeout=10)
    mon.stop()
    wall = time.perf_counter() - t0
    manifest_path = results_root / profile / "manifest.json"
    if not manifest_path.exists():  # a profile given as a YAML path is named by its `name:`
        found = sorted(results_root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
        manifest_path = found[-1] if found else manifest_path
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    notebooks = {}
    for nb, info in (manifest.get("notebooks") or {}).items():
        peak = mon.peaks.get(nb, {})
        notebooks[nb] = {k: info.get(k) for k in ("status", "seconds", "stages_built", "stages_reused",
                                                  "strong_requests_sent")}
        notebooks[nb]["peak_tree_rss_mib"] = round(peak.get("rss_bytes", 0) / 2**20, 1) if peak else None
        notebooks[nb]["peak_tree_pss_mib"] = round(peak.get("pss_bytes", 0) / 2**20, 1) if peak else None
        notebooks[nb]["peak_processes"] = peak.get("processes")
    overall = mon.overall()
    shown = shlex.join(["python", *cmd[1:]])
    return {"label": label, "command": f"COWEST_RESULTS=<tmp> {shown}", "returncode": rc,
            "wall_s": wall, "total_seconds": manifest.get("total_seconds"), "notebooks": notebooks,
            "peak_tree_rss_mib": round(overall["rss_bytes"] / 2**20, 1),
            "peak_tree_pss_mib": round(overall["pss_bytes"] / 2**20, 1), "memory_samples": mon.samples,
            "ru_maxrss_children_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "ledger_totals": (manifest.get("ledger") or {}).get("totals"),
            "output_tail": "".join(tail)[-3000:]}


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"


def part_notebooks(s: Settings) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="suite-notebooks-") as tmp:
        for label in ("cold", "cached"):
            log(f"notebooks: {label} run of the {s.notebook_profile} profile")
            run = _run_notebooks_once(s.notebook_profile, Path(tmp), s.notebook_timeout_s, label)
            runs.append(run)
            if run["returncode"] != 0:
                break
    ok = len(runs) == 2 and all(r["returncode"] == 0 for r in runs)
    return {"profile": s.notebook_profile, "runs": runs, "status": "ok" if ok else "failed",
            **({} if ok else {"error": f"run '{runs[-1]['label']}' exited with {runs[-1]['returncode']}: "
                                       + _last_line(runs[-1]["output_tail"])}),
            "memory_method": "peak over 0.5 s polls of the runner's process tree (/proc): sum of RSS (shared "
                             "pages counted once per process: an upper bound) and sum of PSS; "
                             "ru_maxrss_children: largest single descendant so far (coarse)"}


# --------------------------------------------------------------------------- report


def _f(x: Any, fmt: str = ".1f") -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        return format(x, fmt)
    return str(x)


def _status_line(part: Mapping[str, Any]) -> str | None:
    st = part.get("status")
    if st in ("failed", "skipped"):
        return f"**{st}**: {part.get('error') or part.get('reason') or ''}"
    return None


def _md_matmul(p: Mapping[str, Any]) -> list[str]:
    out = [f"Peak **{_f(p['peak_gflops'])} GFLOPS** (float32, {p['threads']} threads). "
           f"Method: {p['method']}.", "", "| size | best s | GFLOPS |", "|---|---|---|"]
    for n, v in p["by_size"].items():
        out.append(f"| {n} | {_f(v['best_s'], '.4f')} | {_f(v['gflops'])} |")
    return out


def _md_generation(p: Mapping[str, Any]) -> list[str]:
    pr, ll = p["project"], p["llama_cpp"]
    out = [f"{p['model']}, {p['prompts']} prompts of the {p['profile']} profile, <= {p['max_new_tokens']} new tokens, "
           f"greedy, {p['threads']} threads; best of {p['reps']}.", "",
           "| path | generated tokens | best s | tokens/s |", "|---|---|---|---|",
           f"| project: {pr['path']} (batch {p['gen_batch_size']}) | {pr['generated_tokens']} | {_f(pr['best_s'], '.2f')} "
           f"| {_f(pr['tokens_per_s'])} |",
           f"| {ll['path']} | {ll['generated_tokens']} | {_f(ll['best_s'], '.2f')} | {_f(ll['tokens_per_s'])} |",
           "", f"Ratio project / llama.cpp: **{_f(p['ratio_project_over_llama'], '.2f')}x** (target >= 1: "
               f"{'met' if p['meets_target'] else 'not met'}); identical outputs: {p['identical_outputs']} of "
               f"{p['prompts']}."]
    return out


def _md_training(p: Mapping[str, Any]) -> list[str]:
    out = [f"{p['model']} ({p['profile']} profile, LoRA {p['lora'].get('r')}/{p['lora'].get('alpha')}), "
           f"{p['threads']} threads; {p['step']}; {p['statistic']}. Matmul peak: {_f(p['matmul_peak_gflops'])} GFLOPS.",
           "", "| step | batch | tokens real / padded | scored | best s | tokens/s | GFLOP/step | GFLOPS | % of peak "
               "| formula |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        if r.get("status") == "failed":
            out.append(f"| {r['label']} | **failed**: {r['error'][:200]} | | | | | | | | |")
            continue
        frac = r.get("fraction_of_matmul_peak")
        out.append(f"| {r['label']} | {r['batch']} | {r['real_tokens']} / {r['padded_tokens']} | {r['scored_positions']} "
                   f"| {_f(r['best_s'], '.2f')} | {_f(r['tokens_per_s'], '.0f')} | {_f(r['flops']['total'] / 1e9, '.0f')} "
                   f"| {_f(r['gflops'])} | {_f(frac * 100 if frac is not None else None)} | `{r['flop_formula']}` |")
    out += ["", f"Symbols: {p['flop_symbols']}.", "", f"Full fine-tune for comparison: `{FLOP_FORMULAS['full_sft']}`."]
    return out


def _md_strong(p: Mapping[str, Any]) -> list[str]:
    if p.get("delegated_to"):
        table = p.get("table_markdown")
        head = [f"Delegated to `{p['delegated_to']}` (`{p['command']}`); its JSON is embedded in suite.json "
                f"(`parts.strong.data`){'' if not p.get('json_path') else ', from ' + p['json_path']}."]
        return head + (["", table] if table else [])
    out = [f"{p['model']} on {p['servers']} local llama.cpp server ({p['server_threads']} threads, {p['mode']} mode, "
           f"<= {p['max_tokens']} tokens), {p['prompts']} strong-alone prompts; server start {_f(p['server_startup_s'])} s.",
           "", "| setting | calls | wall s | calls/s | completion tokens/s | prompt tokens sent | processed | "
               "requests sent | mean latency s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in p["levels"]:
        out.append(f"| {r['setting']} | {r['calls']} | {_f(r['wall_s'], '.2f')} | {_f(r['calls_per_s'], '.2f')} "
                   f"| {_f(r['completion_tokens_per_s']) if r['requests_sent'] else '(cached)'} | {r['prompt_tokens_sent']} | {r['prompt_tokens_processed']} "
                   f"| {r['requests_sent']} | {_f(r['mean_latency_s'], '.2f')} |")
    out += ["", p["note"] + "."]
    if p.get("delegation_error"):
        out += ["", f"(`benchmarks/strong_layout.py` failed: {p['delegation_error'][:300]})"]
    elif p.get("note_delegation"):
        out += ["", f"(`{p['note_delegation']}`; the minimal built-in measurement was run.)"]
    return out


def _md_notebooks(p: Mapping[str, Any]) -> list[str]:
    runs = {r["label"]: r for r in p["runs"]}
    cold, cached = runs.get("cold", {}), runs.get("cached", {})
    names = list(dict.fromkeys(list(cold.get("notebooks", {})) + list(cached.get("notebooks", {}))))
    out = [f"`{(cold or cached).get('command', '')}`, twice into one temporary results root. "
           f"Memory: {p['memory_method']}.", "",
           "| notebook | cold s | cold peak RSS / PSS MiB | stages built (cold) | requests sent (cold) | cached s "
           "| cached peak RSS / PSS MiB | stages built (cached) | requests sent (cached) |",
           "|---|---|---|---|---|---|---|---|---|"]

    def cells(run: Mapping[str, Any], nb: str) -> str:
        v = run.get("notebooks", {}).get(nb)
        if not v:
            return "| – | – | – | –"
        built = ", ".join(f"{k} {n}" for k, n in (v.get("stages_built") or {}).items()) or "none"
        return (f"| {_f(v.get('seconds'))} | {_f(v.get('peak_tree_rss_mib'), '.0f')} / {_f(v.get('peak_tree_pss_mib'), '.0f')} "
                f"| {built} | {_f(v.get('strong_requests_sent'), 'd')}")

    for nb in names:
        out.append(f"| {nb} {cells(cold, nb)} {cells(cached, nb)} |")
    for r in (cold, cached):
        if r:
            out.append(f"\n{r['label']}: total {_f(r.get('total_seconds'))} s (wall {_f(r.get('wall_s'))} s), peak tree "
                       f"RSS {_f(r.get('peak_tree_rss_mib'), '.0f')} MiB / PSS {_f(r.get('peak_tree_pss_mib'), '.0f')} MiB, "
                       f"ru_maxrss (largest descendant so far) {_f(r.get('ru_maxrss_children_mib'), '.0f')} MiB, "
                       f"exit code {r.get('returncode')}.")
    return out


SECTIONS = (("matmul", "Matmul peak", _md_matmul), ("generation", "1. Weak generation throughput", _md_generation),
            ("training", "2. SFT and DPO steps, LoRA and QLoRA", _md_training),
            ("strong", "3. Strong-model calls", _md_strong),
            ("notebooks", "4. Notebooks: cold run and cached run", _md_notebooks))


def render_markdown(record: Mapping[str, Any]) -> str:
    m, v = record["machine"], record["versions"]
    lines = [f"# Benchmark suite ({'quick' if record.get('quick') else 'full'} run)", "",
             f"Date: {record['date']}. Command: `{record.get('command', '')}`. Wall time: {_f(record.get('wall_s'))} s. "
             "Written by `benchmarks/suite.py` (see `benchmarks/README.md`); every timing is in `suite.json`.", "",
             "## Machine", "", "| CPU | cores (usable) | torch threads | memory GiB (available at start) | "
             "load average at start -> end | platform |", "|---|---|---|---|---|---|",
             f"| {m.get('cpu_model')} | {m.get('cpu_count')} ({m.get('cpus_usable')}) | {m.get('torch_threads')} | "
             f"{_f(m.get('memory_gib'))} ({_f(m.get('memory_available_gib'))}) | "
             f"{' / '.join(_f(x, '.2f') for x in m.get('load_average', []))} -> "
             f"{' / '.join(_f(x, '.2f') for x in record.get('load_average_end', []))} | {m.get('platform')} |", "",
             "## Versions", "", "| " + " | ".join(v) + " |", "|" + "---|" * len(v), "| " + " | ".join(v.values()) + " |"]
    parts = record.get("parts", {})
    for key, title, fn in SECTIONS:
        if key not in parts:
            continue
        p = parts[key]
        lines += ["", f"## {title}", ""]
        status = _status_line(p)
        if status:
            lines.append(status)
            continue
        try:
            lines += fn(p)
        except Exception as e:  # noqa: BLE001 - a malformed part must not hide the others
            lines.append(f"(could not render this part: {type(e).__name__}: {e}; see suite.json)")
        lines.append(f"\n({_f(p.get('seconds'))} s)")
    not_run = [k for k in PARTS if k not in parts]
    if not_run:
        lines += ["", f"Not run this time: {', '.join(not_run)}."]
    return "\n".join(lines) + "\n"


def write_outputs(record: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "suite.json", out_dir / "README.md"
    tmp_js = js.with_suffix(".json.tmp")
    tmp_js.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp_js, js)
    md.write_text(render_markdown(record))
    return js, md


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The project's benchmark suite on this machine (see the module docstring).")
    ap.add_argument("--quick", action="store_true", help="shrink every part (~3 minutes); skips 'notebooks'")
    ap.add_argument("--only", nargs="+", choices=PARTS, metavar="PART",
                    help=f"run only these parts ({', '.join(PARTS)}); 'training' also runs 'matmul'")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads, and llama.cpp threads for the generation part (default: torch's default)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for suite.json and README.md")
    ap.add_argument("--notebook-profile", default="smoke", help="profile of the notebooks part (default smoke)")
    ap.add_argument("--notebook-timeout", type=float, default=3600.0, help="seconds per notebooks run")
    ap.add_argument("--strong-builtin", action="store_true",
                    help="measure strong calls with the built-in version (concurrency 1, 2, 4 on one server, "
                         "warm cache) even when benchmarks/strong_layout.py exists")
    ns = ap.parse_args(argv)

    import torch

    if ns.threads:
        torch.set_num_threads(ns.threads)
    s = make_settings(ns.quick, torch.get_num_threads(), ns.notebook_profile, ns.notebook_timeout,
                      ns.strong_builtin)
    parts = resolve_parts(ns.only, ns.quick)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "suite": 1, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "benchmarks/suite.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": ns.quick, "parts_selected": parts, "settings": dataclasses.asdict(s),
        "machine": machine_info(), "versions": _versions(), "flop_formulas": FLOP_FORMULAS, "parts": {},
    }
    log(f"{'quick' if ns.quick else 'full'} run of {', '.join(parts)}; {s.threads} torch threads; "
        f"writing to {ns.out}")
    plan: dict[str, Callable[[], dict[str, Any]]] = {
        "matmul": lambda: matmul_peak(s.matmul_sizes, s.matmul_reps),
        "generation": lambda: part_generation(s),
        "training": lambda: part_training(s, record["parts"].get("matmul")),
        "strong": lambda: part_strong(s),
        "notebooks": lambda: part_notebooks(s),
    }
    for name in parts:
        record["parts"][name] = run_part(name, plan[name])
        record["wall_s"] = round(time.perf_counter() - started, 1)
        record["load_average_end"] = list(os.getloadavg())
        write_outputs(record, ns.out)
    js, md = write_outputs(record, ns.out)
    failed = [k for k, v in record["parts"].items() if v.get("status") not in ("ok",)]
    log(f"done in {record['wall_s']:.0f} s; {js} and {md}" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
