"""The strong phase's layout on a small CPU, measured side by side in one run.

Real strong calls of the tiny profile's main strong model (Qwen2.5-Coder-0.5B through
llama-cpp-python's server, chat mode, `max_tokens` 64): refinement prompts built with
``cowest.collaborate.Collaborator.refine_prompt`` on items of a synthetic task, with drafts
in the weak model's chain-of-thought format (half with the gold answer, half with a wrong
one). Three ways to answer the same prompts:

- ``1 server x 2 threads, concurrency 1``: one llama.cpp server (``StrongSpec.servers: 1,
  n_threads: 2, concurrency: 1``, the layout before ``ServerPool``);
- ``2 servers x 1 thread, concurrency 2``: ``servers: 2, n_threads: 1, concurrency: 2``;
- ``warm-cache rerun``: the second layout again on the cache the first run filled: every
  call is a cache hit and the (lazily started) pool must start no server.

Every timed run gets a fresh pool and a fresh cache, so the servers start cold; the start
is timed apart from the calls (``pool.start()`` before the batch; a client would start it
at its first cache miss). The two real layouts alternate (A B, B A, ...) so that a slow
spell of a shared CPU hits both; the table shows the fastest repetition of each (other jobs
only ever add time) and the JSON keeps every timing. Their answers are compared text by
text.

Prompt tokens: llama-cpp-python reports ``usage.prompt_tokens`` = every token of the
prompt (sent); it has no ``timings`` field. What the server actually processed (the part
after the prefix it kept in its KV cache from its previous request) is read from its log,
run with ``--verbose True``: one ``prompt eval time = ... / N tokens`` line per request.

Usage::

    .venv/bin/python benchmarks/strong_layout.py [--calls 20] [--reps 2] [--out results/benchmarks/strong_layout.json]

Prints a Markdown table and writes the JSON (machine, versions, date, every timing).
Timings depend on what else runs on the machine: compare the ratios, not the absolute
times, across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cowest.cache import RequestCache  # noqa: E402
from cowest.client import StrongClient  # noqa: E402
from cowest.collaborate import Collaborator  # noqa: E402
from cowest.config import StrongSpec  # noqa: E402
from cowest.ledger import Ledger  # noqa: E402
from cowest.server import ServerPool  # noqa: E402
from cowest.tasks import get_task  # noqa: E402

MODEL = "qwen2.5-coder-0.5b"
TASK = ("synth_ifqa", {"n_entities": 6})  # the first tiny profile's domain, when this was measured
#: (label, servers, n_threads, concurrency)
LAYOUTS = [("1 server x 2 threads, concurrency 1", 1, 2, 1),
           ("2 servers x 1 thread, concurrency 2", 2, 1, 2)]
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")


def spec_of(servers: int, n_threads: int, concurrency: int) -> StrongSpec:
    """The tiny profile's main strong model with this layout."""
    return StrongSpec(name=MODEL, model=MODEL, mode="chat", max_tokens=64, n_threads=n_threads,
                      servers=servers, concurrency=concurrency)


def build_prompts(n: int) -> list[str]:
    task = get_task(TASK[0], **TASK[1])
    items = task.load("test", n, 0)
    collab = Collaborator(task, SimpleNamespace(mode="chat"))  # prompts only (a chat client's)
    prompts = []
    for i, e in enumerate(items):
        draft = task.target(e, "cot")
        if i % 2:  # a wrong final answer, same reasoning shape
            gold = task.answer_text(e)
            wrong = str(int(gold) + 1) if gold.isdigit() else "unknown"
            draft = draft.replace(f"Answer: {gold}", f"Answer: {wrong}")
        prompts.append(collab.refine_prompt(e, draft))
    return prompts


def processed_tokens(pool: ServerPool) -> int:
    return sum(int(m) for s in pool.servers if s.log_path and s.log_path.exists()
               for m in _PROMPT_EVAL.findall(s.log_path.read_text(errors="replace")))


def run_layout(layout: tuple[str, int, int, int], prompts: list[str], work: Path,
               tag: str) -> dict[str, Any]:
    label, servers, n_threads, concurrency = layout
    spec = spec_of(servers, n_threads, concurrency)
    db = work / f"{tag}.sqlite"
    pool = ServerPool.from_spec(spec, logits_all=False, log_path=work / f"{tag}.log")
    for s in pool.servers:
        s.extra_args = ["--verbose", "True"]  # per-request prompt-eval lines in the log
    client = StrongClient.from_spec(spec, endpoint=pool, cache=RequestCache(db), ledger=Ledger(db))
    try:
        t0 = time.perf_counter()
        pool.start()
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = client.complete_many(prompts, stage="bench", desc=f"{tag}: {label}")
        calls = time.perf_counter() - t0
    finally:
        pool.stop()
    assert all(o.ok and not o.cached for o in out), [o.error for o in out if not o.ok]
    return {"layout": label, "tag": tag, "db": str(db), "servers": servers, "n_threads": n_threads,
            "concurrency": concurrency, "startup_s": startup, "calls_s": calls,
            "calls": len(out), "prompt_tokens_sent": sum(o.prompt_tokens for o in out),
            "prompt_tokens_processed": processed_tokens(pool),
            "completion_tokens": sum(o.completion_tokens for o in out),
            "texts": [o.text for o in out]}


def warm_rerun(db: Path, prompts: list[str], work: Path) -> dict[str, Any]:
    spec = spec_of(2, 1, 2)
    pool = ServerPool.from_spec(spec, logits_all=False, log_path=work / "warm.log")
    client = StrongClient.from_spec(spec, endpoint=pool, cache=RequestCache(db), ledger=Ledger(db))
    try:
        t0 = time.perf_counter()
        out = client.complete_many(prompts, stage="bench-warm", desc="warm-cache rerun")
        calls = time.perf_counter() - t0
        started = pool.started
    finally:
        pool.stop()
    return {"layout": "warm-cache rerun (2 servers x 1 thread, concurrency 2)", "calls_s": calls,
            "servers_started": started, "cache_hits": sum(o.cached for o in out), "calls": len(out),
            "texts": [o.text for o in out]}


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    def version(p: str) -> str | None:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "load_average": os.getloadavg(),
            "versions": {p: version(p) for p in ("llama_cpp_python", "openai")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20, help="strong calls per run (16-24)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each real layout")
    ap.add_argument("--out", type=Path, default=REPO / "results/benchmarks/strong_layout.json")
    args = ap.parse_args()
    start = time.perf_counter()
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "model": MODEL,
            "task": TASK[0], "machine_at_start": machine()}
    prompts = build_prompts(args.calls)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="strong-layout-") as tmp:
        work = Path(tmp)
        for rep in range(args.reps):
            order = LAYOUTS if rep % 2 == 0 else LAYOUTS[::-1]
            for layout in order:
                tag = f"{'A' if layout is LAYOUTS[0] else 'B'}{rep}"
                runs.append(run_layout(layout, prompts, work, tag))
                print(f"{tag} {layout[0]}: {runs[-1]['calls_s']:.1f} s", file=sys.stderr)
        last_b = [r for r in runs if r["tag"].startswith("B")][-1]
        warm = warm_rerun(Path(last_b["db"]), prompts, work)
    best = {label: min((r for r in runs if r["layout"] == label), key=lambda r: r["calls_s"])
            for label, *_ in LAYOUTS}
    a, b = (best[label] for label, *_ in LAYOUTS)
    identical = sum(x == y for x, y in zip(a["texts"], b["texts"]))
    same_across_reps = all(r["texts"] == runs[0]["texts"] for r in runs)
    result = {**info, "calls": args.calls, "reps": args.reps, "runs": runs, "warm": warm,
              "speedup_best": a["calls_s"] / b["calls_s"],
              "identical_texts_between_layouts": identical,
              "identical_texts_in_every_run": same_across_reps,
              "warm_texts_equal": warm["texts"] == b["texts"],
              "machine_at_end": machine(), "wall_s": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    rows = ["| layout | servers started | calls | best calls s (all reps) | s per call | server start s "
            "| prompt tokens sent | prompt tokens processed |",
            "|---|---|---|---|---|---|---|---|"]
    for label, *_ in LAYOUTS:
        every = ", ".join(f"{x['calls_s']:.1f}" for x in runs if x["layout"] == label)
        r = best[label]
        rows.append(f"| {label} | {r['servers']} | {r['calls']} | {r['calls_s']:.1f} ({every}) "
                    f"| {r['calls_s'] / r['calls']:.2f} "
                    f"| {r['startup_s']:.1f} | {r['prompt_tokens_sent']} | {r['prompt_tokens_processed']} |")
    rows.append(f"| {warm['layout']} | {warm['servers_started']} | {warm['calls']} "
                f"({warm['cache_hits']} cache hits) | {warm['calls_s']:.3f} | "
                f"{warm['calls_s'] / warm['calls']:.3f} | - | 0 | 0 |")
    print("\n".join(rows))
    print(f"\nSpeed-up of 2 x 1-thread servers over 1 x 2-thread server (best runs): "
          f"**{result['speedup_best']:.2f}x**. Identical answers between the layouts: "
          f"{identical} of {args.calls}; identical in every run: {same_across_reps}; warm rerun "
          f"equal: {result['warm_texts_equal']}. Load average at start "
          f"{info['machine_at_start']['load_average']}, at end {result['machine_at_end']['load_average']} "
          f"(a shared CPU: compare the ratio). Wall time {result['wall_s']:.0f} s. JSON: {args.out}")


if __name__ == "__main__":
    main()
