# Pilot of the miniature's gates (not a profile of the project): results/benchmarks/miniature_pilot.md
# It was run as /tmp/pilot/run_pilot.py; below these three lines it is that file, unchanged. To rerun it:
# mkdir -p /tmp/pilot && cp benchmarks/miniature_pilot.yaml /tmp/pilot/pilot.yaml && .venv/bin/python benchmarks/miniature_pilot.py
import json, sys, time
from pathlib import Path
from cowest.config import load_profile
from cowest.pipeline import Pipeline

cfg = load_profile("/tmp/pilot/pilot.yaml")
run = Pipeline(cfg, results=Path("/tmp/pilot/results"))
out = []
t0 = time.time()
for t in cfg.tasks:
    ts = time.time()
    ck = run.sft(t.name)
    log = run.sft_log(ck)
    print(f"[pilot] {t.name}: SFT {log['global_step']} steps, {log['runtime_s']} s, loss {log['first_loss']:.2f}->{log['last_loss']:.3f}", flush=True)
    wk = run.weak_knowledge_gate(t.name)
    print(f"[pilot] {t.name}: {wk.detail}", flush=True)
    for s in cfg.gates.candidates:
        tg = time.time()
        for r in run.gates(t.name, s):
            print(f"[pilot] {t.name} / {s}: {r.gate} {r.passed}: {r.detail}", flush=True)
            out.append({"strong": s, **r.to_dict()})
        print(f"[pilot] {t.name} / {s}: gates took {time.time() - tg:.0f} s", flush=True)
    print(f"[pilot] {t.name}: {time.time() - ts:.0f} s", flush=True)
run.close()
json.dump(out, open("/tmp/pilot/gates.json", "w"), indent=1)
print(f"[pilot] total {time.time() - t0:.0f} s")
