#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the weak model's CUDA paths (bf16 LoRA and 4-bit
# QLoRA SFT and DPO steps through cowest.train, generation, peak memory) in a few minutes.
#
#   benchmarks/gpu_check.sh [OUT_DIR]      run it (default OUT_DIR: results/benchmarks)
#   benchmarks/gpu_check.sh prepare        (on a machine with package-registry access) fill
#                                          .gpucheck/ for a bare GPU machine with no network
#
# Python: .venv/bin/python when ./reproduce.sh setup made one with a CUDA torch, else python3.
# On a bare machine (torch and transformers installed, nothing fetchable), `prepare` first,
# copy the repository with .gpucheck/, then run: the wheels in .gpucheck/wheels are
# installed into a temporary folder, and the model configs and tokenizer in
# .gpucheck/models stand in for the offline models (random weights; see gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpucheck

if [ "${1:-}" = "prepare" ]; then
  PY=${PYTHON:-python3}
  mkdir -p "$KIT/wheels" "$KIT/models/smollm2-135m-hf" "$KIT/models/gemma3-270m-hf"
  # the project's pins that a CUDA image usually lacks (pyproject.toml has the full list);
  # transformers, torch, accelerate and pyarrow are taken from the image
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${WHEEL_PY:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$KIT/wheels" \
    trl==1.16.0 peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  src=${COWEST_HOME:-.cowest}/models
  cp "$src"/smollm2-135m-hf/{config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} \
    "$KIT/models/smollm2-135m-hf/"
  cp "$src"/gemma3-270m-hf/config.json "$KIT/models/gemma3-270m-hf/"
  du -sh "$KIT"
  exit 0
fi

OUT_DIR=${1:-results/benchmarks}
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  PY=.venv/bin/python
else
  PY=python3
  if [ -d "$KIT/wheels" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpucheck-site "$KIT"/wheels/*.whl
    export PYTHONPATH="/tmp/gpucheck-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  [ -d "$KIT/models" ] && [ ! -d .cowest/models ] && export COWEST_HOME="$PWD/$KIT"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" "${@:2}"
