# Pilot 2 of the miniature gates: the answer pass on the pilot's SFT stages (reused). Run as /tmp/pilot2/run.py with
# /tmp/pilot2/pilot.yaml (= benchmarks/miniature_pilot.yaml with gates.candidates: [qwen2.5-coder-1.5b]); the file below is unchanged.
"""Pilot v2: the gates with the answer pass, on the pilot's SFT stages (reused), with failures dumped."""
import json, sys, time
from pathlib import Path
from cowest import gates
from cowest.config import load_profile
from cowest.pipeline import Pipeline

cfg = load_profile(sys.argv[1])
run = Pipeline(cfg, results=Path("/tmp/pilot/results"))
out, samples = [], {}
for t in cfg.tasks:
    task = run.task(t.name)
    ck = run.sft(t.name)
    wk = run.weak_knowledge_gate(t.name)
    print(f"[pilot2] {t.name}: {wk.detail}", flush=True)
    for s in cfg.gates.candidates:
        tg = time.time()
        rows, items = run.gate_rows(t.name, s)
        res = gates.evaluate(task, rows, items, cfg.gates)
        dt = time.time() - tg
        for r in res:
            print(f"[pilot2] {t.name} / {s}: {r.gate} {r.passed}: {r.detail}", flush=True)
            out.append({"strong": s, **r.to_dict(), "seconds": dt})
        bad = []
        for r, e in zip(rows["fact_given"], items["fact_given"]):
            if not gates._correct(task, r["strong"], e):
                bad.append({"kind": "fact_given", "q": task.render_question(e), "gold": e.golds, "strong": r["strong"]})
        for r, e in zip(rows["draft_use"], items["draft_use"]):
            if not gates._correct(task, r["final"], e):
                bad.append({"kind": "draft_use", "q": task.render_question(e), "gold": e.golds, "draft": r["draft"], "final": r["final"]})
        samples[f"{t.name}/{s}"] = bad
        print(f"[pilot2] {t.name} / {s}: {dt:.0f} s, {len(bad)} wrong", flush=True)
print(json.dumps(run.ledger.summary(), indent=0)[:3000])
run.close()
json.dump({"gates": out, "wrong": samples}, open("/tmp/pilot2/out.json", "w"), indent=1)
