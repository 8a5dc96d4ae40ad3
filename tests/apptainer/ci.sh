#!/usr/bin/env bash
# runtime apptainer for real, from nothing (a CI step of .ci/run; as root on Debian 12):
#   1. a real Apptainer (tests/apptainer/setup.sh: Debian sid's 1.4.5 in a sid root; skipped where one is installed);
#   2. the CPU demo through `snakemake --cores 1 --use-singularity --configfile config/demo-apptainer.yaml`: the
#      workflow builds the CPU engine's base image from its hash lock, every server runs in it, then tables, report
#      and bundle; the bundle is verified;
#   3. the vLLM 0.7.1 image built from its lock (ATTNBENCH_CI_IMAGE071=0 leaves it out: about 8 minutes; disk peak
#      about 15 GB beside the image, none in /tmp);
#   4. pytest -m apptainer with ATTNBENCH_REQUIRE_APPTAINER=1, so a missing piece fails instead of skipping.
# Prints the minutes each part took.
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s); lap() { echo "apptainer CI: $1 took $(( ($(date +%s) - t0) / 60 )) min $(( ($(date +%s) - t0) % 60 )) s"; t0=$(date +%s); }
if ! command -v apptainer >/dev/null; then
  bash tests/apptainer/setup.sh
  PATH="$(bash tests/apptainer/setup.sh --bin):$PATH"
  export PATH
fi
apptainer --version
lap "setup"
snakemake --cores 1 --use-singularity --configfile config/demo-apptainer.yaml
attnbench verify results/demo-apptainer/bundle-*.tar.gz
lap "CPU demo in Apptainer (image build included)"
export ATTNBENCH_REQUIRE_APPTAINER=1
if [[ "${ATTNBENCH_CI_IMAGE071:-1}" == 1 ]]; then
  df -h . /tmp
  if [[ ! -f results/images/vllm-0.7.1/base.json ]] && ! attnbench image build-base --key vllm-0.7.1; then
    # CI shows only the end of its output: put the build's own last words and the disks there.
    tail -n 40 results/images/vllm-0.7.1/build.log; df -h . /tmp; exit 1
  fi
  du -b results/images/vllm-0.7.1/base.sif
  export ATTNBENCH_REQUIRE_IMAGE071=1
  lap "vLLM 0.7.1 image build"
fi
python -m pytest -m apptainer tests/integration/test_apptainer.py -q
lap "apptainer tests"
