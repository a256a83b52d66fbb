"""Run one SFT of SmolLM2 with a checkpoint every step, for tests/test_train.py's resume test.

    python tests/resume_driver.py OUT_DIR CHECKPOINTS_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cowest import train  # noqa: E402
from cowest.assets import hf_folder  # noqa: E402
from cowest.config import load_profile  # noqa: E402
from cowest.weak import load_tokenizer, render_prompt  # noqa: E402


def spec():
    w = load_profile("smoke").weak_model("gemma3-270m").model_copy(update={"model": "smollm2-135m"})
    sft = w.sft.model_copy(update={"batch_size": 2, "trl": {"save_strategy": "steps", "save_steps": 1,
                                                             "max_steps": 6, "logging_steps": 1}})
    return w.model_copy(update={"sft": sft, "quantization": "none"})


def rows():
    tok = load_tokenizer(hf_folder("smollm2-135m"))
    return [{"prompt": render_prompt(tok, f"What is {i} plus {i}?"), "completion": f"Answer: {2 * i}"}
            for i in range(12)]


if __name__ == "__main__":
    out, ckpts = Path(sys.argv[1]), Path(sys.argv[2])
    log = train.sft(hf_folder("smollm2-135m"), rows(), out, weak=spec(), seed=0, checkpoints=ckpts)
    print("RESUMED_FROM", log["resumed_from"], "STEPS", log["global_step"])
