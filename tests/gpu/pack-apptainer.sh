#!/usr/bin/env bash
# Here, with network: pack what the offline GPU host needs for the runtime-apptainer experiments into folders of at
# most PART_MIB MiB (default: what a call's 64 MiB leaves beside the working tree's tracked files, less 2 MiB; the
# device tool refuses a call whose tree plus carry exceeds 64 MiB), .gpu/b00, .gpu/b01, ...:
#   b00   Debian sid's Apptainer .debs (from the harness's sid root, tests/apptainer/setup.sh), the project's Python
#         dependencies missing on the host (Python 3.12 wheels; the host list is ../shared/gpu/host-packages.txt),
#         and the commit (.gpu/commit) for provenance;
#   b01.. the engine image exported by `attnbench image export` (parts with their sha256 and the build record).
# There, each call copies its folder into /tmp/gpu (`cp -r .gpu/bNN/. /tmp/gpu/`); the last one runs
# `bash tests/gpu/h100.sh install-apptainer` and `... start` (tests/gpu/README.md).
#   bash tests/gpu/pack-apptainer.sh KEY [HOST_PACKAGES]      e.g. vllm-0.7.1 ../shared/gpu/host-packages.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
KEY=${1:?engine line, e.g. vllm-0.7.1}
HOST_PACKAGES=${2:-../shared/gpu/host-packages.txt}
# Every call re-sends the tracked tree: published bundles make it grow (17 MiB on 2026-12-06, when 54 MiB parts no
# longer fitted), so the part size follows it.
TREE_MIB=$(git ls-files -z | xargs -0 stat -L -c %s 2>/dev/null | awk '{t += $1} END {print int(t / 1048576) + 1}')
PART_MIB=${PART_MIB:-$((64 - TREE_MIB - 2))}
echo "tracked tree ${TREE_MIB} MiB: parts of ${PART_MIB} MiB"
SID=${ATTNBENCH_APPTAINER_DIR:-/var/tmp/attnbench-apptainer}/sid
G=.gpu
rm -rf "$G"/b* "$G/img"; mkdir -p "$G/b00/debs" "$G/b00/wh"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
for p in apptainer squashfs-tools squashfuse libsquashfuse0 fuse2fs libfuse3-4 liblzo2-2; do
  cp "$SID"/var/cache/apt/archives/${p}_*.deb "$G/b00/debs/"
done
# Python 3.12 wheels of the project's dependencies that the host lacks (connection_pool is an sdist on PyPI).
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
P=(--python-version 3.12 --implementation cp --only-binary=:all:)
for n in 17 24 27 28 31 34 35 39; do P+=(--platform "manylinux_2_${n}_x86_64"); done
P+=(--platform manylinux2014_x86_64 --platform linux_x86_64 --platform any)
python3 -m pip wheel -q --no-deps connection_pool==0.0.3 -w "$W/local"
python3 -m pip install -q --dry-run --ignore-installed --report "$W/report.json" "${P[@]}" --find-links "$W/local" \
  --target "$W/t" . nvidia-ml-py
python3 - "$W/report.json" "$HOST_PACKAGES" > "$W/want.txt" <<'PY'
import json, re, sys
have = {l.strip() for l in open(sys.argv[2]) if l.strip()}
for item in json.load(open(sys.argv[1]))["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name in have or name in ("attnbench", "connection-pool"):
        continue
    print(f'{item["metadata"]["name"]}=={item["metadata"]["version"]}')
PY
python3 -m pip download -q --no-deps "${P[@]}" -d "$G/b00/wh" -r "$W/want.txt"
cp "$W"/local/*.whl "$G/b00/wh/"
git describe --always --dirty --abbrev=40 > "$G/commit"
cp "$G/commit" "$G/b00/"
attnbench image export --key "$KEY" --out "$G/img" --part-mib "$PART_MIB"
i=1
for part in "$G/img/$KEY".part*; do
  b=$(printf '%s/b%02d/img' "$G" "$i"); mkdir -p "$b"; mv "$part" "$b/"; i=$((i + 1))
done
cp "$G/img/$KEY.export.json" "$(printf '%s/b%02d/img' "$G" $((i - 1)))/"
du -sh "$G"/b* | tr '\n' ' '; echo
echo "$((i)) folders; carry each as .gpu/bNN and copy it with: mkdir -p /tmp/gpu && cp -r .gpu/bNN/. /tmp/gpu/"
