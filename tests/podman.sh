#!/usr/bin/env bash
# The runtime-docker tests against podman, set up from nothing (opt-in CI step; about 5-10 minutes):
#   1. podman, runc, debootstrap from apt (when missing and running as root);
#   2. the local CPU engine image from the engine venv of ATTNBENCH_ENGINE_PYTHON (containers/cpu-engine/build-image.sh,
#      kept between runs by podman's own storage);
#   3. podman's Docker-compatible API on a private socket (DOCKER_HOST for the docker SDK);
#   4. pytest -m podman with ATTNBENCH_REQUIRE_PODMAN=1, so a missing piece fails instead of skipping.
# The API service is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ATTNBENCH_ENGINE_PYTHON:?set ATTNBENCH_ENGINE_PYTHON to the CPU engine interpreter (.ci/run does)}"
export CONTAINERS_CONF="$PWD/containers/cpu-engine/containers.conf"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "podman.sh: podman, runc and debootstrap are needed (apt-get install -y ...)" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
bash containers/cpu-engine/build-image.sh "$(dirname "$(dirname "$ATTNBENCH_ENGINE_PYTHON")")"
sock=$(mktemp -d)/podman.sock
podman system service --time=0 "unix://$sock" &
service=$!
trap 'kill "$service" 2>/dev/null; wait "$service" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.2; done
export DOCKER_HOST="unix://$sock" ATTNBENCH_REQUIRE_PODMAN=1
python -m pytest -m podman tests/integration/test_podman.py -q
