"""benchmarks/suite.py: the parts that need no model (matmul peak, FLOP model, log parsing,
process-tree memory, the JSON and Markdown writers). The heavy parts are not run here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITE_PATH = REPO / "benchmarks" / "suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("benchmarks_suite", SUITE_PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return mod


SMOLLM2_CONFIG = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                  "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}


def test_matmul_peak_shape(suite):
    res = suite.matmul_peak(sizes=(64, 128), reps=2)
    assert set(res["by_size"]) == {"64", "128"}
    for v in res["by_size"].values():
        assert len(v["times_s"]) == 2 and v["best_s"] == min(v["times_s"]) > 0
        assert v["gflops"] == pytest.approx(2 * int(next(k for k, w in res["by_size"].items() if w is v)) ** 3
                                            / v["best_s"] / 1e9)
    assert res["peak_gflops"] == max(v["gflops"] for v in res["by_size"].values()) > 0
    assert res["dtype"] == "float32" and res["threads"] >= 1


def test_decoder_shape_smollm2(suite):
    shape = suite.decoder_shape(SMOLLM2_CONFIG)
    # per layer: q, o (576x576 each), k, v (576x192 each), gate/up/down (576x1536 each)
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert shape["n_body"] == 30 * per_layer == 106_168_320
    assert (shape["d_att"], shape["d_kv"], shape["vocab"], shape["n_layers"]) == (576, 192, 49152, 30)
    # with the tied 49152 x 576 embedding the model has ~134.5M weights in matrices (SmolLM2-135M)
    assert 130e6 < shape["n_body"] + 49152 * 576 < 140e6
    # head_dim and num_key_value_heads default like Hugging Face's
    plain = suite.decoder_shape({k: v for k, v in SMOLLM2_CONFIG.items()
                                 if k not in ("head_dim", "num_key_value_heads")})
    assert plain["d_kv"] == plain["d_att"] == 576


def test_flop_model(suite):
    shape = {"n_body": 1000, "vocab": 10, "d_model": 5, "n_layers": 2, "d_att": 4}
    kw = dict(n_lora=0, padded_tokens=7, scored=0, seq_sq_sum=0)
    # the brief's rules of thumb: a frozen base costs 4 N T, a full backward 6 N T
    assert suite.train_step_flops("lora_sft", shape, **kw)["total"] == 4 * 1000 * 7
    assert suite.train_step_flops("full_sft", shape, **kw)["total"] == 6 * 1000 * 7
    assert suite.train_step_flops("lora_dpo", shape, **kw)["total"] == 6 * 1000 * 7  # + reference forward
    kw = dict(n_lora=20, padded_tokens=7, scored=3, seq_sq_sum=9)
    sft = suite.train_step_flops("lora_sft", shape, **kw)
    assert sft["body"] == 4 * 1000 * 7
    assert sft["head"] == 4 * 10 * 5 * 3
    assert sft["attention"] == 12 * 2 * 4 * 9
    assert sft["lora"] == 6 * 20 * 7
    assert sft["total"] == sft["body"] + sft["head"] + sft["attention"] + sft["lora"]
    dpo = suite.train_step_flops("lora_dpo", shape, **kw)
    fwd = 2 * 1000 * 7 + 2 * 10 * 5 * 3 + 4 * 2 * 4 * 9 + 2 * 20 * 7
    assert dpo["total"] == sft["total"] + fwd
    with pytest.raises(ValueError):
        suite.train_step_flops("nope", shape, **kw)
    assert set(suite.FLOP_FORMULAS) >= {"lora_sft", "lora_dpo", "full_sft", "forward", "qlora"}


def test_parse_llama_log(suite):
    text = ("noise\nLlama.generate: 170 prefix-match hit, remaining 65 prompt tokens to eval\n"
            "llama_perf_context_print: prompt eval time =     154.85 ms /    65 tokens (  2.4 ms per token)\n"
            "llama_perf_context_print:        eval time =    2091.43 ms /    47 runs\n"
            "llama_perf_context_print: prompt eval time =    7782.43 ms /   235 tokens (  33 ms per token)\n"
            "Llama.generate: full prompt already cached, skipping reset\n")
    got = suite.parse_llama_log(text)
    assert got["requests_logged"] == 2
    assert got["prompt_tokens_processed"] == 300
    assert got["prefix_hits"] == 1 and got["prefix_tokens_reused"] == 170
    assert got["full_prompt_cached"] == 1
    assert got["prompt_eval_ms"] == pytest.approx(154.85 + 7782.43)
    assert suite.parse_llama_log("")["prompt_tokens_processed"] == 0


def test_resolve_parts(suite):
    assert suite.resolve_parts(None, quick=False) == list(suite.PARTS)
    assert "notebooks" not in suite.resolve_parts(None, quick=True)
    assert suite.resolve_parts(["training"], quick=True) == ["matmul", "training"]
    assert suite.resolve_parts(["generation", "matmul"], quick=True) == ["matmul", "generation"]
    with pytest.raises(ValueError):
        suite.resolve_parts(["nope"], quick=True)


def test_run_part_records_failure(suite):
    res = suite.run_part("boom", lambda: {"x": 1 / 0})
    assert res["status"] == "failed" and "ZeroDivisionError" in res["error"] and "traceback" in res
    ok = suite.run_part("fine", lambda: {"x": 1})
    assert ok["status"] == "ok" and ok["x"] == 1 and ok["seconds"] >= 0


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_tree_memory_sees_a_child(suite):
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(5)"])
    try:
        import time

        mon = suite.TreeMemoryMonitor(os.getpid(), interval_s=0.1).start()
        deadline = time.time() + 4
        while time.time() < deadline and child.pid not in suite.process_tree(os.getpid()):
            time.sleep(0.05)
        time.sleep(0.6)
        mon.stop()
        assert child.pid in suite.process_tree(os.getpid())
        alone = suite.tree_memory(child.pid)
        assert alone["processes"] == 1 and alone["rss_bytes"] > 32 << 20
        assert mon.samples >= 1 and mon.overall()["processes"] >= 2
        assert mon.overall()["rss_bytes"] >= alone["rss_bytes"]
    finally:
        child.kill()
        child.wait()


def _record(suite):
    """A hand-made result of every part, one of them failed."""
    flops = suite.train_step_flops("lora_sft", suite.decoder_shape(SMOLLM2_CONFIG), n_lora=1_843_200,
                                   padded_tokens=928, scored=305, seq_sq_sum=8 * 116**2)
    train_row = {"step": "sft", "quantization": "none", "label": "SFT LoRA", "batch": 8, "rows": 8,
                 "padded_length": 116, "real_tokens": 850, "padded_tokens": 928, "scored_positions": 305,
                 "best_s": 4.0, "times_s": [4.0], "tokens_per_s": 212.5, "flops": flops,
                 "flop_formula": suite.FLOP_FORMULAS["lora_sft"], "gflops": flops["total"] / 4e9,
                 "fraction_of_matmul_peak": 0.25}
    return {
        "suite": 1, "date": "2026-11-27T12:00:00+00:00", "command": "python benchmarks/suite.py --quick",
        "quick": True, "wall_s": 12.0, "load_average_end": [1.0, 1.0, 1.0],
        "machine": {"cpu_model": "Test CPU", "cpu_count": 2, "cpus_usable": 2, "torch_threads": 2,
                    "memory_gib": 23.4, "memory_available_gib": 20.0, "platform": "Linux",
                    "load_average": [0.5, 0.5, 0.5]},
        "versions": {"python": "3.11.7", "torch": "2.13.0"},
        "parts": {
            "matmul": {"status": "ok", "seconds": 1.0, "dtype": "float32", "threads": 2, "peak_gflops": 100.0,
                       "method": "m", "by_size": {"1024": {"best_s": 0.02, "gflops": 100.0, "times_s": [0.02]}}},
            "generation": {"status": "ok", "seconds": 30.0, "model": "smollm2-135m", "profile": "tiny", "prompts": 8,
                           "max_new_tokens": 48, "gen_batch_size": 20, "threads": 2, "reps": 1,
                           "project": {"path": "cowest.weak.generate", "generated_tokens": 300, "best_s": 5.0,
                                       "tokens_per_s": 60.0},
                           "llama_cpp": {"path": "llama.cpp", "generated_tokens": 310, "best_s": 4.0,
                                         "tokens_per_s": 77.5},
                           "ratio_project_over_llama": 60 / 77.5, "meets_target": False, "identical_outputs": 3},
            "training": {"status": "ok", "seconds": 60.0, "model": "smollm2-135m", "profile": "tiny",
                         "lora": {"r": 16, "alpha": 32}, "threads": 2, "step": "training_step",
                         "statistic": "best", "matmul_peak_gflops": 100.0, "flop_symbols": suite.FLOP_SYMBOLS,
                         "rows": [train_row, {"label": "DPO QLoRA (4-bit)", "status": "failed",
                                              "error": "RuntimeError: no kernel"}]},
            "strong": {"status": "failed", "seconds": 2.0, "error": "LocalServerError: did not start"},
            "notebooks": {"status": "ok", "seconds": 900.0, "memory_method": "polls",
                          "runs": [{"label": label, "command": "COWEST_RESULTS=<tmp> python -m cowest run --profile smoke",
                                    "returncode": 0, "wall_s": 100.0, "total_seconds": 95.0,
                                    "peak_tree_rss_mib": 2048.0, "peak_tree_pss_mib": 1500.0,
                                    "ru_maxrss_children_mib": 900.0,
                                    "notebooks": {"01_data.ipynb": {"status": "ok", "seconds": 5.0,
                                                                    "stages_built": {"data": 3} if label == "cold" else {},
                                                                    "strong_requests_sent": 0,
                                                                    "peak_tree_rss_mib": 400.0,
                                                                    "peak_tree_pss_mib": 300.0}}}
                                   for label in ("cold", "cached")]},
        },
    }


def test_markdown_and_json(suite, tmp_path):
    record = _record(suite)
    js, md = suite.write_outputs(record, tmp_path / "out")
    assert js.name == "suite.json" and md.name == "README.md"
    assert json.loads(js.read_text()) == json.loads(json.dumps(record))
    text = md.read_text()
    for heading in ("## Machine", "## Versions", "## Matmul peak", "## 1. Weak generation throughput",
                    "## 2. SFT and DPO steps, LoRA and QLoRA", "## 3. Strong-model calls",
                    "## 4. Notebooks: cold run and cached run"):
        assert heading in text, heading
    assert "Test CPU" in text and "23.4" in text and "| 2 (2) | 2 |" in text and "2026-11-27" in text
    assert "0.77x" in text and "not met" in text  # the generation ratio and its target
    assert "**failed**: LocalServerError: did not start" in text
    assert "DPO QLoRA (4-bit) | **failed**" in text
    assert "`4*N*T + 4*V*d*S" in text and "25.0" in text  # the formula and % of peak in the training table
    assert "| 01_data.ipynb | 5.0 | 400 / 300 | data 3 | 0 | 5.0 | 400 / 300 | none | 0 |" in text
    # every Markdown table row of a table has as many cells as its header
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            n = lines[i - 1].count("|")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == n, lines[j]
                j += 1


def test_markdown_survives_a_malformed_part(suite):
    record = _record(suite)
    record["parts"]["generation"] = {"status": "ok", "seconds": 1.0}  # keys missing
    del record["parts"]["notebooks"]
    text = suite.render_markdown(record)
    assert "could not render this part" in text and "Not run this time: notebooks." in text


def test_machine_info_and_versions(suite):
    m = suite.machine_info()
    assert m["cpu_count"] >= 1 and m["torch_threads"] >= 1 and m["cpu_model"]
    assert m["memory_gib"] is None or m["memory_gib"] > 0
    v = suite._versions()
    assert v["python"] and "torch" in v and "llama_cpp_python" in v


def test_cli_matmul_only(tmp_path):
    """The command line, end to end, on the one part that needs no model."""
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(SUITE_PATH), "--quick", "--only", "matmul", "--threads", "1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[suite] matmul: ok" in proc.stdout
    record = json.loads((out / "suite.json").read_text())
    assert record["quick"] is True and record["parts_selected"] == ["matmul"]
    assert record["machine"]["torch_threads"] == 1 and record["parts"]["matmul"]["status"] == "ok"
    assert set(record["parts"]["matmul"]["by_size"]) == {"1024", "2048"}
    assert "## Matmul peak" in (out / "README.md").read_text()


def test_strong_layout_args_and_table(suite):
    help_with_quick = "usage: strong_layout.py [--quick] [--out OUT]"
    help_calls = "usage: strong_layout.py [--calls CALLS] [--reps REPS] [--out OUT]"
    assert suite.strong_layout_args(help_with_quick, quick=True, calls=4) == ["--quick"]
    assert suite.strong_layout_args(help_calls, quick=True, calls=4) == ["--calls", "4", "--reps", "1"]
    assert suite.strong_layout_args(help_calls, quick=False, calls=4) == []
    assert suite.strong_layout_args("usage: x [--out OUT]", quick=True, calls=4) == []
    out = "A0 layout: 3.0 s\n| a | b |\n|---|---|\n| 1 | 2 |\n\nSpeed-up **2x**.\n"
    assert suite.markdown_tail(out) == "| a | b |\n|---|---|\n| 1 | 2 |\n\nSpeed-up **2x**."
    assert suite.markdown_tail("no table") is None


def test_notebooks_part_records_a_failed_run(suite):
    """The runner's plumbing (subprocess, memory monitor, manifest) on a run that fails at once."""
    s = suite.make_settings(True, 1, notebook_profile="no-such-profile", notebook_timeout_s=120)
    res = suite.part_notebooks(s)
    assert res["status"] == "failed" and "exited with" in res["error"]
    assert len(res["runs"]) == 1  # no cached run after a failed cold one
    run = res["runs"][0]
    assert run["label"] == "cold" and run["returncode"] != 0 and run["notebooks"] == {}
    assert run["command"].startswith("COWEST_RESULTS=<tmp> python -m cowest run --profile no-such-profile")
    assert run["memory_samples"] >= 1 and run["peak_tree_rss_mib"] > 0
    text = suite.render_markdown({**_record(suite), "parts": {"notebooks": res}})
    assert "## 4. Notebooks" in text and "**failed**" in text


# ------------------------------------------------------------------ benchmarks/gpu_check.py


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_plan_names_weak_models_of_the_profiles(gpu_check):
    from cowest.config import load_profile

    for name, (profile, weak, quants, (p_len, c_len)) in gpu_check.PLAN.items():
        spec = next((w for w in load_profile(profile).weak_models if w.name == weak), None)
        assert spec is not None, f"{name}: {profile} has no weak model {weak}"
        assert set(quants) <= {"none", "4bit"}
        # the synthetic rows fit the spec's max_length (prompt + completion + template), so nothing is cut
        assert p_len + c_len + 32 <= min(spec.sft.max_length, spec.dpo.max_length)
        assert name in gpu_check.ARCH_CONFIGS or name in ("smollm2-135m", "gemma3-270m")


def test_gpu_check_rows_have_the_planned_lengths(gpu_check):
    from cowest.weak import load_tokenizer
    from cowest.assets import hf_folder

    tok = load_tokenizer(hf_folder("smollm2-135m"))
    rows, pairs = gpu_check.make_rows(tok, 3, (20, 10))
    assert len(rows) == len(pairs) == 3
    for r, p in zip(rows, pairs):
        assert len(tok(r["completion"], add_special_tokens=False)["input_ids"]) in (9, 10, 11)
        assert p["chosen"] != p["rejected"] and p["prompt"] == r["prompt"]


def test_gpu_check_markdown_of_the_committed_run(gpu_check):
    rec = json.loads((REPO / "results" / "benchmarks" / "gpu_check.json").read_text())
    md = gpu_check.render_markdown(rec)
    for name in gpu_check.PLAN:
        assert f"| {name} |" in md
    assert "bf16 matmul peak" in md and rec["env"]["gpu"]["cuda_available"] is True
    # a failed run shows its error in the table instead of numbers
    rec["models"]["smollm2-135m"]["runs"]["none"] = {"error": "TypeError: boom"}
    assert "TypeError: boom" in gpu_check.render_markdown(rec)


def test_checkpointing_field_exists_in_training_arguments():
    import dataclasses

    from transformers import TrainingArguments

    from cowest.train import _checkpointing_field

    assert _checkpointing_field() in {f.name for f in dataclasses.fields(TrainingArguments)}
