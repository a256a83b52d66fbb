#!/usr/bin/env bash
# Serve an open strong model of the paper profile (Llama-3-70B-Instruct or Llama-2-70B-chat)
# with vLLM's OpenAI-compatible server, where configs/paper.yaml expects it.
#
#   scripts/serve_vllm.sh llama3-70b      # http://localhost:8000/v1  (strong_models.llama3-70b)
#   scripts/serve_vllm.sh llama2-70b      # http://localhost:8001/v1  (strong_models.llama2-70b)
#
# Needs: vLLM (pip install vllm; its own CUDA torch, so best in a separate environment), access
# to the gated meta-llama repositories (huggingface-cli login), and GPUs for a 70B model in
# bf16: about 140 GB of weights plus KV cache, e.g. 4 x 80 GB (TP=4) or 2 x 141 GB H200 (TP=2).
# Set TP to the number of GPUs. A 4-bit AWQ/GPTQ build fits 2 x 80 GB; pass MODEL=<that repo>.
# The key the client sends must match: export VLLM_API_KEY=<any string> on both sides.
# Expected cost: the paper profile's planned calls (./reproduce.sh --profile paper --dry-run)
# for one 70B model are about 16k requests of ~350 prompt / ~384 output tokens; vLLM on 4 x H100
# serves such requests at roughly 1-2k output tokens/s with batching, so about 1-2 GPU-hours
# per model (4-8 GPU-hours on 4 GPUs). This estimate is not measured here.
set -euo pipefail
which=${1:?usage: scripts/serve_vllm.sh llama3-70b|llama2-70b}
case "$which" in
  llama3-70b) MODEL=${MODEL:-meta-llama/Meta-Llama-3-70B-Instruct}; PORT=${PORT:-8000} ;;
  llama2-70b) MODEL=${MODEL:-meta-llama/Llama-2-70b-chat-hf}; PORT=${PORT:-8001} ;;
  *) echo "error: unknown model '$which' (use llama3-70b or llama2-70b)" >&2; exit 2 ;;
esac
: "${VLLM_API_KEY:?export VLLM_API_KEY=<any string>: the client of the paper profile sends it (api_key_env)}"
command -v vllm >/dev/null || { echo "error: vllm is not installed (pip install vllm, in its own environment)" >&2; exit 2; }
# --served-model-name: the name the profile sends as `model`; max-model-len covers the
# longest prompts (FLARE, SuperICL) plus max_tokens 384
exec vllm serve "$MODEL" --served-model-name "$MODEL" --port "$PORT" --api-key "$VLLM_API_KEY" \
  --tensor-parallel-size "${TP:-4}" --dtype bfloat16 --max-model-len 4096 --gpu-memory-utilization 0.92 \
  ${REVISION:+--revision "$REVISION"}
