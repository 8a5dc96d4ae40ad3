#!/usr/bin/env bash
# A real Apptainer for a Debian 12 machine, which has none in its archive (tests and CI use it; a machine with
# Apptainer installed never needs it). Debian sid packages apptainer 1.4.5, which needs sid's glibc, so it lives in
# a sid root filesystem; a wrapper named `apptainer` enters that root through a private mount namespace and
# pivot_root (Apptainer's starter refuses a plain chroot) with this machine's working folders bind-mounted at the
# same paths, so Snakemake and attnbench call it unchanged.
#
#   bash tests/apptainer/setup.sh            # idempotent; about 3 minutes and 1.2 GB the first time
#   export PATH="$(bash tests/apptainer/setup.sh --bin):$PATH"
#
# ATTNBENCH_APPTAINER_DIR  where the root and the wrapper live [/var/tmp/attnbench-apptainer]
# MIRROR                   Debian mirror [the system's own, from /etc/apt/sources.list.d/debian.sources]
# Needs root (debootstrap, mount namespaces). Never touches the system's apt sources.
set -euo pipefail
W=${ATTNBENCH_APPTAINER_DIR:-/var/tmp/attnbench-apptainer}
R=$W/sid
if [[ "${1:-}" == "--bin" ]]; then echo "$W/bin"; exit 0; fi
if [[ -x "$W/bin/apptainer" && -f "$W/.ready" ]]; then
  "$W/bin/apptainer" --version; exit 0
fi
[[ $(id -u) == 0 ]] || { echo "tests/apptainer/setup.sh: needs root (debootstrap, unshare)" >&2; exit 2; }
mkdir -p "$W/bin"
MIRROR=${MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
T0=$(date +%s); step() { echo "[apptainer setup $(($(date +%s) - T0))s] $*"; }

if ! command -v debootstrap >/dev/null; then
  step "host: apt-get install debootstrap"
  apt-get install -y -q debootstrap >"$W/host-apt.log" 2>&1 || { apt-get update -q >>"$W/host-apt.log" 2>&1 &&
    apt-get install -y -q debootstrap >>"$W/host-apt.log" 2>&1; }
fi
if [[ ! -x "$R/usr/bin/apt-get" ]]; then
  step "debootstrap --variant=minbase sid from $MIRROR"
  rm -rf "$R"
  debootstrap --variant=minbase sid "$R" "$MIRROR" >"$W/debootstrap.log" 2>&1 || {
    tail -5 "$W/debootstrap.log" >&2; exit 1; }
fi
# A snapshot mirror's Release files may have expired.
printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' >"$R/etc/apt/apt.conf.d/99no-check-valid"

# The wrapper. Bound at the same paths: the caller's working folder, /tmp, /var/tmp, $HOME, /opt (local wheels),
# the host's DNS and CA files, and ATTNBENCH_APPTAINER_BINDS (space-separated). The environment passes through
# (Apptainer itself drops the host's PATH inside containers); PATH becomes the sid root's. The host's
# resolver, hosts and CA files are bound over the root's own (builds fetch packages through them).
sed "s|@ROOT@|$R|" >"$W/bin/apptainer" <<'EOS'
#!/bin/sh
# apptainer from the Debian sid root @ROOT@ (written by tests/apptainer/setup.sh; see there)
R=@ROOT@
exec unshare --mount --propagation private -- /bin/sh -c '
set -e; R=$1; shift; D=$PWD
mount --bind "$R" "$R"; mount --bind /proc "$R/proc"
mount --rbind /sys "$R/sys"; mount --rbind /dev "$R/dev"
for f in /etc/resolv.conf /etc/hosts /etc/ssl/certs/ca-certificates.crt; do
  [ -f "$f" ] || continue; [ -L "$R$f" ] && rm -f "$R$f"
  mkdir -p "$R${f%/*}"; [ -e "$R$f" ] || : >"$R$f"; mount --bind "$f" "$R$f"
done
for b in "$D" /tmp /var/tmp "${HOME:-/root}" /opt $ATTNBENCH_APPTAINER_BINDS; do
  [ -e "$b" ] || continue
  case "$b" in /) continue;; esac
  mkdir -p "$R$b" 2>/dev/null || true; mount --rbind "$b" "$R$b"
done
mkdir -p "$R/.oldroot"; cd "$R"; pivot_root . .oldroot
umount -l /.oldroot
cd "$D" 2>/dev/null || cd /
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec apptainer "$@"
' sh "$R" "$@"
EOS
chmod +x "$W/bin/apptainer"

enter() { unshare --mount --propagation private -- /bin/sh -c '
set -e; R=$1; shift; mount --bind "$R" "$R"; mount --bind /proc "$R/proc"; mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"; rm -f "$R/etc/resolv.conf"; : >"$R/etc/resolv.conf"
mount --bind /etc/resolv.conf "$R/etc/resolv.conf"
mkdir -p "$R/.oldroot"; cd "$R"; pivot_root . .oldroot; umount -l /.oldroot; cd /
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"' sh "$R" "$@"; }

if [[ ! -x "$R/usr/bin/apptainer" ]]; then
  step "apt-get install apptainer (and squashfs-tools, debootstrap) in the sid root"
  enter sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends apptainer squashfs-tools squashfuse fuse2fs debootstrap ca-certificates zstd' \
    >"$W/apt-in-sid.log" 2>&1 || { tail -5 "$W/apt-in-sid.log" >&2; exit 1; }
fi

# Root asks for every capability by default; this machine's bounding set lacks some (CAP_SYS_RESOURCE here), and
# the starter then aborts. Root gets only the file capabilities it is granted, i.e. all of the bounding set.
step "apptainer.conf: root gets the capabilities of this machine's bounding set"
enter sh -c 'caps=$(setpriv -d | sed -n "s/^Capability bounding set: //p" | tr a-z A-Z | sed -E "s/(^|,)/\1CAP_/g")
  sed -i "s/^root default capabilities = full/root default capabilities = file/" /etc/apptainer/apptainer.conf
  apptainer capability add --user root "$caps" >/dev/null 2>&1 || true'
touch "$W/.ready"
"$W/bin/apptainer" --version
step "done; $(du -sxh "$W" | cut -f1) in $W"
