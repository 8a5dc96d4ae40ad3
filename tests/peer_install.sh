#!/usr/bin/env bash
# A peer's install: `pip install .` (not editable) into a fresh venv, then, from a folder outside the checkout,
# verify every published bundle and compare one with the article's reference. Fails if schemas, reference data or
# model architectures are missing from the package (they ship as package data), or if any bundle fails.
# Usage: bash tests/peer_install.sh   (about 1 minute with a local wheel cache)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$repo" >"$work/pip.log" 2>&1 || { tail -20 "$work/pip.log"; exit 1; }
mkdir "$work/peer" && cd "$work/peer"  # nothing of the checkout is reachable from here but the bundles
"$work/venv/bin/attnbench" --help >/dev/null
bundles=("$repo"/results/published/*/bundle-*.tar.gz)
for b in "${bundles[@]}"; do
  "$work/venv/bin/attnbench" verify "$b"
done
"$work/venv/bin/attnbench" compare "${bundles[0]}" --reference article --out "$work/peer/cmp" >/dev/null
test -s "$work/peer/cmp/comparison.md"
echo "peer install: ${#bundles[@]} published bundle(s) PASS with a non-editable install"
