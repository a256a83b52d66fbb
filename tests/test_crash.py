"""Crash test (slow integration test, ~2-3 minutes on 2 CPU cores): a run killed with
SIGKILL in the middle of a stage and run again ends with exactly the result of a run that
was never interrupted, and never pays twice for a strong-model answer it had received.

The run is one CoWest round (`sft -> preferences -> dpo`) for one task of the smoke
profile (SmolLM2-135M, a few training steps), in a subprocess (`tests/crash_driver.py`).
The strong model is the fake OpenAI-compatible server of `tests/fakeserver.py`, in this
process, so requests are counted AT THE SERVER: its answers are deterministic functions of
the prompt (the standalone answer is wrong; a refinement is right or wrong by a hash of its
prompt), so pairs are mined and two runs get the same answers.

Crash points:

1. during preference building (starting from a copy of the uninterrupted run's SFT stage,
   to save a training): the server holds the request that reaches the middle of the
   stage's requests unanswered, and the run is killed while it waits for it; every request
   before it was answered (the client sends one at a time);
2. during DPO (starting from a copy of the uninterrupted run's results without its DPO
   stage): the run is killed while the DPO stage folder exists without its marker, with
   training under way in the stage's temporary adapter folder.

After each, the run is started again and must finish with the uninterrupted run's pairs
and adapter hashes; no request answered before the kill reaches the server again. Each
test prints what it saw (`pytest -s`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cowest.tasks import get_task

try:  # tests/ as a package, or tests/ itself on sys.path (pytest's default "prepend")
    from tests.fakeserver import FakeOpenAI, _prompt_of
except ImportError:  # pragma: no cover
    from fakeserver import FakeOpenAI, _prompt_of  # type: ignore[no-redef]

#: a slow integration test (real training in subprocesses, minutes); it runs in the normal suite
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().with_name("crash_driver.py")
TASK = "synth_safety"  # labels: a wrong answer is easy to write
N_TRAIN, N_QUERIES, K, SEED = 8, 4, 4, 0  # smoke's n_train; 4 queries x (1 alone + 4 refinements) requests
PROFILE_NAME = "crash"
OVERRIDES = [f"collab.n_queries={N_QUERIES}", f"collab.k={K}",
             "collab.max_pairs_per_query=1",  # <= 4 pairs: one DPO step
             "weak_models.smollm2-135m.quantization=none"]  # float32 LoRA: faster than QLoRA on a CPU
RUN_TIMEOUT_S = 300


class StrongFake(FakeOpenAI):
    """The fake server as a deterministic strong model for the task, with a hold.

    `hold_at = n`: the n-th POST received (counting from the start) is held unanswered
    until `release` is set; `held` is set when it arrives.
    """

    def __init__(self, gold: dict[str, str], labels: list[str]) -> None:
        super().__init__(models=("fake-strong",))
        self.gold, self.labels = gold, labels
        self.hold_at: int | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self.unknown: list[str] = []

    def _next_action(self, body: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            n = len(self.posts())
        if self.hold_at is not None and n == self.hold_at:
            self.held.set()
            self.release.wait(timeout=RUN_TIMEOUT_S)
        prompt = _prompt_of(body)
        found = [q for q in self.gold if q in prompt]
        if not found:
            self.unknown.append(prompt)
            return {"status": 400}
        gold = self.gold[max(found, key=len)]
        wrong = next(label for label in self.labels if label != gold)
        refine = "Specialist's draft:" in prompt
        right = refine and hashlib.sha256(prompt.encode()).digest()[0] % 2 == 0
        return {"text": f"Reasoning: the norm of this people covers the action.\nAnswer: {gold if right else wrong}"}

    def bodies(self, start: int = 0) -> list[str]:
        """The JSON body of every POST from the `start`-th on, canonical (sorted keys)."""
        return [json.dumps(r["body"], sort_keys=True) for r in self.posts()[start:]]


@pytest.fixture(scope="module")
def fake():
    task = get_task(TASK)
    items = task.load("train", N_TRAIN + N_QUERIES, SEED)
    gold = {task.render_question(e): task.answer_text(e) for e in items}
    with StrongFake(gold, list(task.info.labels or [])) as f:
        yield f
        f.release.set()


@pytest.fixture(scope="module")
def profile(fake, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crash-profile") / "crash.yaml"
    path.write_text(
        f"name: {PROFILE_NAME}\n"
        f"extends: {REPO / 'configs' / 'smoke.yaml'}\n"
        "description: crash test - one CoWest round against a fake strong model\n"
        "strong_models:\n"
        f"  - {{name: fake-strong, model: fake-strong, backend: api, base_url: '{fake.base_url}', free: true,\n"
        "     mode: chat, max_tokens: 40, concurrency: 1, max_retries: 0, timeout_s: 60}\n"
        "tasks:\n"
        f"  - {{name: {TASK}, strong: fake-strong}}\n"
    )
    return path


def _start(profile: Path, results: Path, log: Path) -> subprocess.Popen:
    out = results.parent / f"{results.name}-out.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(DRIVER), str(profile), str(results), str(out), "--task", TASK]
    cmd += [a for o in OVERRIDES for a in ("--set", o)]
    with log.open("a") as f:  # the child keeps its own copy
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _finish(proc: subprocess.Popen, results: Path, log: Path) -> dict[str, Any]:
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = "timeout"
    assert rc == 0, f"the driver failed ({rc}); its log ({log}) ends with:\n{log.read_text()[-3000:]}"
    return json.loads((results.parent / f"{results.name}-out.json").read_text())


def _run(profile: Path, results: Path) -> dict[str, Any]:
    log = results.parent / f"{results.name}.log"
    return _finish(_start(profile, results, log), results, log)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _runs(results: Path) -> Path:
    return results / PROFILE_NAME / "runs"


@pytest.fixture(scope="module")
def reference(fake, profile, tmp_path_factory) -> dict[str, Any]:
    """An uninterrupted run, and the request bodies the server received for it."""
    results = tmp_path_factory.mktemp("crash") / "uninterrupted"
    start = len(fake.posts())
    out = _run(profile, results)
    bodies = fake.bodies(start)
    assert not fake.unknown, f"the fake could not place prompts: {fake.unknown[:1]}"
    assert out["dpo_trained"] and out["stats"]["pairs"] > 0 and out["stats"]["failed"] == 0
    assert N_QUERIES < len(bodies) <= N_QUERIES * (1 + K) and max(Counter(bodies).values()) == 1
    return {**out, "bodies": bodies, "results": results}


def _copy_stages(src: Path, dst: Path, kinds: list[str]) -> None:
    """Stages of one results folder into another (stages are addressed by their inputs)."""
    for kind in kinds:
        shutil.copytree(_runs(src) / kind, _runs(dst) / kind, symlinks=True)


def test_killed_while_building_preferences(fake, profile, reference, tmp_path):
    """From the uninterrupted run's SFT adapter (to save a training); drafts, preferences, DPO here."""
    results, log = tmp_path / "killed", tmp_path / "killed.log"
    _copy_stages(reference["results"], results, ["sft"])
    n = len(reference["bodies"])
    half = n // 2
    start = len(fake.posts())
    fake.held.clear()
    fake.release.clear()
    fake.hold_at = start + half  # the half-th request of the stage: held until the kill
    proc = _start(profile, results, log)
    try:
        while not fake.held.wait(0.2):
            assert proc.poll() is None, f"the driver ended before the kill:\n{log.read_text()[-3000:]}"
        _kill(proc)
    finally:
        fake.hold_at = None
        fake.release.set()
        if proc.poll() is None:
            proc.kill()
    received_before_kill = fake.bodies(start)
    answered_before_kill = received_before_kill[: half - 1]  # one at a time: all but the held one
    assert len(received_before_kill) == half
    prefs = list(_runs(results).glob("prefs/*/"))
    assert len(prefs) == 1 and not (prefs[0] / "_done.json").exists()  # killed mid-stage

    out = _run(profile, results)  # the rerun, to completion
    bodies = fake.bodies(start)
    counts = Counter(bodies)
    paid_twice = [b for b in answered_before_kill if counts[b] > 1]
    print(f"\n[crash] preferences: killed with {half - 1} of {n} requests answered and request {half} held; "
          f"the rerun sent {len(bodies) - half}; answered requests received twice at the server: "
          f"{len(paid_twice)}; unanswered request received again: {counts[received_before_kill[-1]] - 1}")
    assert paid_twice == [], f"{len(paid_twice)} answered request(s) were sent again"
    assert sorted(counts.values()) == [1] * (n - 1) + [2]  # only the unanswered one, sent again
    assert counts[received_before_kill[-1]] == 2
    assert set(bodies) == set(reference["bodies"])  # the same requests as the uninterrupted run
    assert fake.max_in_flight == 1
    assert "drafts" in out["reused"]  # finished before the kill: not redone
    assert out["built"] == ["prefs", "dpo"]
    for key in ("pairs", "stats", "prefs_key", "sft_adapter_sha256", "dpo_adapter_sha256"):
        assert out[key] == reference[key], key


def test_killed_during_dpo(fake, profile, reference, tmp_path):
    """From the uninterrupted run's finished preferences (a copy without its DPO stage)."""
    results, log = tmp_path / "killed", tmp_path / "killed.log"
    shutil.copytree(reference["results"], results, symlinks=True)
    shutil.rmtree(_runs(results) / "dpo")
    shutil.rmtree(_runs(results) / "by-name" / "dpo")
    start = len(fake.posts())
    proc = _start(profile, results, log)
    try:
        stage, since = None, None
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:  # the stage folder without its marker, training under way in its temporary folder
            assert proc.poll() is None, f"the driver ended before the kill:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "DPO never started"
            stage = next(iter(_runs(results).glob("dpo/*/")), None)
            if stage is not None and list(stage.glob(".adapter.*")):
                since = since or time.monotonic()
                if time.monotonic() - since > 2.0:  # the model is loaded, the trainer at work
                    break
            time.sleep(0.05)
        assert not (stage / "_done.json").exists() and not (stage / "adapter").exists()
        under_way = sorted(p.relative_to(stage).as_posix() for p in stage.glob(".adapter.*/*"))
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (stage / "_done.json").exists()

    out = _run(profile, results)  # the rerun, to completion
    assert out["built"] == ["dpo"]  # everything before DPO reused, DPO redone once
    assert out["dpo_adapter_sha256"] == reference["dpo_adapter_sha256"]
    assert out["pairs"] == reference["pairs"]
    print(f"\n[crash] dpo: killed with the stage folder unmarked and {under_way or 'nothing'} in its temporary "
          f"adapter folder; the rerun trained once, adapter sha256 {out['dpo_adapter_sha256'][:16]} "
          f"(uninterrupted: {reference['dpo_adapter_sha256'][:16]}); strong-model requests received: "
          f"{len(fake.bodies(start))}")
    assert fake.bodies(start) == []  # the strong model was not asked anything again
    assert [p.name for p in stage.iterdir() if p.name.startswith(".")] == []  # the killed build's leftovers
