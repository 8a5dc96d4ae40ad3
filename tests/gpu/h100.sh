#!/usr/bin/env bash
# Runs the pipeline on the offline GPU host of issue 7 (one H100, no network, no containers, no vLLM; each command
# there lasts at most 10 minutes and the machine is given back 30 s after a command returns).
# The pipeline itself runs in the background (setsid), so it outlives one command; later commands poll it and copy
# whatever it has finished into $OUT, so every completed run survives the loss of the machine.
#
#   bash tests/gpu/h100.sh install           # wheelhouse parts already copied into /tmp/wh (tests/gpu/README.md)
#   bash tests/gpu/h100.sh install-apptainer # Apptainer + the project's Python deps from /tmp/gpu (pack-apptainer.sh),
#                                            # and the engine image imported (attnbench image import)
#   bash tests/gpu/h100.sh start TARGET...   # snakemake targets in order (default: the plan below), in the background
#   bash tests/gpu/h100.sh poll SECONDS      # wait up to SECONDS, print progress, copy results to $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
# Every command re-sends the working tree and overwrites the checkout, so the pipeline runs from its own copy.
RUN=/tmp/attnbench-run
SITE=/tmp/site
export PYTHONPATH=$SITE:/tmp/attnbench-run/workflow PATH=/tmp/abin:$SITE/bin:$PATH PYTHONUNBUFFERED=1
EXP=${ATTNBENCH_EXP:-h100}
CONFIG=${ATTNBENCH_CONFIG:-config/$EXP.yaml}
# e.g. --use-singularity for the errata experiment (runtime apptainer)
SNAKEMAKE_ARGS=${ATTNBENCH_SNAKEMAKE_ARGS:-}
OUTBOX=/tmp/outbox
DRIVE_LOG=/tmp/drive.log

# Order matters when time runs out: one run of every arm first (kernel attribution for each), then repeats.
read -r -a PLAN <<<"${ATTNBENCH_PLAN:-fa3/rep0 triton/rep0 fa2/rep0 fa3/rep1 fa3/rep2}"

pack() {
  mkdir -p "$OUTBOX"
  # Raw records, logs, run.json, kernels.json, tables: everything but the model folder and the raw traces.
  tar czf "$OUTBOX/results-$EXP.tgz.part" --exclude="results/$EXP/models" --exclude="*/trace" "results/$EXP" .snakemake/log \
    results/images/*/base.json results/images/*/base.versions.json 2>/dev/null
  mv "$OUTBOX/results-$EXP.tgz.part" "$OUTBOX/results-$EXP.tgz"
  for t in results/$EXP/runs/*/rep0/trace; do
    [ -d "$t" ] || continue
    arm=$(basename "$(dirname "$(dirname "$t")")")
    [ -f "$OUTBOX/trace-$arm.tgz" ] || tar czf "$OUTBOX/trace-$arm.tgz" -C "$(dirname "$t")" trace
  done
}

case "${1:-}" in
install)
  # The vLLM wheelhouse (shared/gpu/wheelhouse.sh) plus Snakemake and what it needs beyond the host's packages.
  [ -f $SITE/.attnbench ] && { echo "already installed"; exit 0; }
  bash /tmp/wh/install.sh /tmp/wh $SITE || exit 1
  mkdir -p /tmp/abin
  printf '#!/bin/sh\nexec python3 -m attnbench.cli "$@"\n' > /tmp/abin/attnbench
  chmod +x /tmp/abin/attnbench
  touch $SITE/.attnbench
  python3 -c "import vllm, torch, snakemake; print('vllm', vllm.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
  ;;
install-apptainer)
  # /tmp/gpu holds what tests/gpu/pack-apptainer.sh packed (each call copied its part there): the sid .debs of
  # Apptainer, the project's Python dependencies missing on the host, and the exported engine image.
  [ -f $SITE/.attnbench ] && { echo "already installed"; exit 0; }
  for f in /tmp/gpu/debs/*.deb; do dpkg -x "$f" /; done
  ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE /tmp/gpu/wh/*.whl || exit 1
  mkdir -p /tmp/abin
  printf '#!/bin/sh\nexec python3 -m attnbench.cli "$@"\n' > /tmp/abin/attnbench
  chmod +x /tmp/abin/attnbench
  touch $SITE/.attnbench
  apptainer --version
  python3 -c "import snakemake; print('snakemake', snakemake.__version__)"
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader
  ;;
start)
  shift
  targets=("$@")
  [ ${#targets[@]} -gt 0 ] || targets=("${PLAN[@]/#/results/$EXP/runs/}")
  targets=("${targets[@]/%//run.json}")
  # The host's copy has no .git: the commit travels in .gpu/commit, written here before the call with
  # `git describe --always --dirty --abbrev=40 > .gpu/commit` and carried with it (provenance.git_commit reads it).
  [ -f .gpu/commit ] && export ATTNBENCH_GIT_COMMIT="$(cat .gpu/commit)"
  [ -f /tmp/gpu/commit ] && export ATTNBENCH_GIT_COMMIT="$(cat /tmp/gpu/commit)"  # pack-apptainer.sh's
  mkdir -p $RUN
  tar cf - --exclude=./.wheelhouse --exclude=./.gpu --exclude=./.git --exclude=./results --exclude=./.snakemake . | tar xf - -C $RUN
  cd $RUN
  # An exported engine image (runtime apptainer) goes where the workflow looks, checked against this checkout's lock.
  for m in /tmp/gpu/img/*.export.json; do
    [ -f "$m" ] || continue
    key=$(basename "$m" .export.json)
    [ -f "results/images/$key/base.sif" ] || attnbench image import /tmp/gpu/img --key "$key" || exit 1
  done
  # setsid: the pipeline runs on after this command returns; it stops when the machine goes back.
  setsid nohup bash -c '
    for t in "$@"; do
      echo "=== $(date +%T) $t"
      snakemake --cores 1 '"$SNAKEMAKE_ARGS"' --configfile '"$CONFIG"' --rerun-incomplete --keep-going "$t"
      rc=$?
      echo "=== $(date +%T) $t exit $rc"
      bash tests/gpu/h100.sh pack
    done
    echo "=== $(date +%T) analysis of the runs that exist"
    for step in aggregate plots report; do
      attnbench $step results/'"$EXP"' --config results/'"$EXP"'/config.effective.json || echo "$step failed"
    done
    attnbench bundle results/'"$EXP"' --config results/'"$EXP"'/config.effective.json || echo "bundle failed"
    bash tests/gpu/h100.sh pack
    echo "=== $(date +%T) DONE"
  ' drive "${targets[@]}" > $DRIVE_LOG 2>&1 < /dev/null &
  echo "started: ${targets[*]}"
  ;;
pack)
  cd $RUN  # the results live in the pipeline's copy, not in the checkout
  pack
  ;;
poll)
  cd $RUN
  deadline=$(( $(date +%s) + ${2:-500} ))
  while [ "$(date +%s)" -lt "$deadline" ] && ! grep -q "=== .* DONE" $DRIVE_LOG 2>/dev/null; do sleep 10; done
  grep -E "^===|Error|error:|Finished job|failed" $DRIVE_LOG | tail -n 40
  for f in results/$EXP/logs/serve_sweep/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 4 "$f"; }; done
  cp $OUTBOX/* "$OUT"/ 2>/dev/null
  cp $DRIVE_LOG "$OUT"/ 2>/dev/null
  ls -la "$OUT"
  ;;
*)
  echo "usage: $0 install|install-apptainer|start [TARGET...]|poll SECONDS|pack" >&2
  exit 2
  ;;
esac
