#!/usr/bin/env bash
# Opt-in CI step: the SLURM tests against a one-node cluster started here (root; Debian/Ubuntu apt), stopped after.
#   ATTNBENCH_CI_SLURM=1 .ci/run      or      bash tests/slurm/ci.sh
# Needs ATTNBENCH_ENGINE_PYTHON (the CPU engine) and `attnbench`/`snakemake` on PATH. About 5-10 minutes on 2 cores:
# the demo through SLURM (2 jobs), a GPU request against the stand-in GPU, a run failing on a node.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/slurm
"$here/start-cluster.sh"
trap '"$here/stop-cluster.sh"' EXIT
ATTNBENCH_REQUIRE_SLURM=1 pytest -q -m slurm tests/integration/test_slurm.py
