#!/bin/sh
# Runs INSIDE a base image's sandbox (attnbench image build-base, through `apptainer exec --writable`): a venv at
# /opt/venv with exactly the locked wheels, hash-checked, from the wheels folder bound at /opt/attnbench/wheels
# (downloaded on the host; the image never reaches the network), then the lock entry's trims, then pip freeze.
set -eu
B=/opt/attnbench
python3 -m venv /opt/venv
/opt/venv/bin/python -m pip install --disable-pip-version-check --no-cache-dir --no-index --find-links "$B/wheels" \
  --no-deps --require-hashes -r "$B/requirements.txt"
# trim.txt: paths relative to the venv's site-packages (shell globs) that no server loads (containers/lock.yaml
# says why for each); removing them only shrinks the image.
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
while IFS= read -r pattern; do
  [ -n "$pattern" ] || continue
  for path in $site/$pattern; do [ -e "$path" ] && rm -rf "$path" && echo "trimmed $path"; done
done < "$B/trim.txt"
/opt/venv/bin/python -m pip freeze --all > "$B/engine-lock.txt"
