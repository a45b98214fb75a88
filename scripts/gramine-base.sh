#!/bin/sh
# Build a real Gramine 1.9 base root filesystem from Debian bookworm, usable as
# `enclave-build build --base dir:ROOTFS` and by the test suite (tests/gramine_base.py).
#
#   scripts/gramine-base.sh ROOTFS
#
# Needs root (mmdebstrap, chroot) and network access to a Debian mirror and PyPI. ROOTFS must not
# exist yet (or be empty). What it holds:
#   - Debian 12 minbase + Gramine's runtime dependencies + python3.11
#   - Gramine 1.9 from the archive (GRAMINE_ARCHIVE; default ../shared/gramine/ next to the repo)
#   - the Python model runtimes of base_images/gramine-python/requirements.txt, installed into
#     the system Python at /usr/local/lib/python3.11/dist-packages (no virtualenv)
#   - every Python tree precompiled with unchecked-hash .pyc files (inside the LibOS a file's
#     st_mtime is 0, so timestamp-checked .pyc files are always stale and never used)
#   - the runtime user `enclave` (uid 10001, gid 0, home /enclave) and an /etc/hosts
#
# Environment: GRAMINE_ARCHIVE, DEBIAN_MIRROR (default http://deb.debian.org/debian),
# PYTHON (a Python with pip, used only to download wheels; default python3).
set -eu

usage() { echo "usage: $0 ROOTFS" >&2; exit 2; }
[ $# -eq 1 ] || usage
ROOTFS=$1
case "$ROOTFS" in -*) usage ;; esac

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
ARCHIVE=${GRAMINE_ARCHIVE:-$REPO/../shared/gramine/gramine-1.9-debian12-x86_64.tar.gz}
REQUIREMENTS=$REPO/base_images/gramine-python/requirements.txt
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
PYVER=3.11
SITE=/usr/local/lib/python$PYVER/dist-packages
UID_RUNTIME=10001

# The Debian package's Depends (gramine 1.9), plus the interpreter the model server runs on.
PACKAGES=libprotobuf-c1,libunwind8,libcurl4,ca-certificates,python3,python3-click,python3-cryptography,python3-jinja2,python3-pyelftools,python3-tomli,python3-tomli-w,python3-voluptuous,python$PYVER

die() { echo "gramine-base: $*" >&2; exit 1; }
step() { echo "gramine-base: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap and chroot)"
[ -f "$ARCHIVE" ] || die "no Gramine archive at $ARCHIVE (set GRAMINE_ARCHIVE)"
[ -f "$REQUIREMENTS" ] || die "no $REQUIREMENTS"
if [ -e "$ROOTFS" ] && [ -n "$(ls -A "$ROOTFS" 2>/dev/null)" ]; then
    die "$ROOTFS exists and is not empty"
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON)"

if ! command -v mmdebstrap >/dev/null 2>&1; then
    step "installing mmdebstrap"
    apt-get install -y mmdebstrap >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq mmdebstrap; } || die "cannot install mmdebstrap"
fi

step "debootstrapping bookworm (minbase) into $ROOTFS"
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR"

step "installing Gramine from $ARCHIVE"
tar -xzf "$ARCHIVE" -C "$ROOTFS" --no-same-owner --no-overwrite-dir
[ -x "$ROOTFS/usr/bin/gramine-direct" ] || die "the archive did not provide usr/bin/gramine-direct"

step "installing the Python runtimes into $SITE"
# Wheels for the image's CPython (3.11, glibc 2.36), whatever Python runs pip here.
PLATFORMS=""
v=36
while [ $v -ge 17 ]; do PLATFORMS="$PLATFORMS --platform manylinux_2_${v}_x86_64"; v=$((v - 1)); done
PLATFORMS="$PLATFORMS --platform manylinux2014_x86_64 --platform linux_x86_64"
# shellcheck disable=SC2086
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --no-compile --target "$ROOTFS$SITE" --only-binary=:all: --implementation cp \
    --python-version $PYVER --abi cp311 --abi abi3 --abi none $PLATFORMS \
    -r "$REQUIREMENTS"
# Console scripts land in the target's bin/: move them where pip would put them in the image,
# run by the image's interpreter.
if [ -d "$ROOTFS$SITE/bin" ]; then
    mkdir -p "$ROOTFS/usr/local/bin"
    for script in "$ROOTFS$SITE"/bin/*; do
        [ -f "$script" ] || continue
        sed "1s|^#!.*python.*|#!/usr/bin/python$PYVER|" "$script" > "$ROOTFS/usr/local/bin/${script##*/}"
        chmod 0755 "$ROOTFS/usr/local/bin/${script##*/}"
    done
    rm -rf "$ROOTFS$SITE/bin"
fi

step "precompiling Python (unchecked-hash .pyc)"
# -f rewrites Debian's timestamp-based .pyc files too. A few files in the standard library are
# deliberately not valid Python (test data); compileall reports them and that is fine.
chroot "$ROOTFS" /usr/bin/python$PYVER -m compileall -q -f --invalidation-mode unchecked-hash \
    /usr/lib/python$PYVER /usr/lib/python3/dist-packages "$SITE" >/dev/null 2>&1 || \
    step "(compileall reported files it could not compile; ignored)"

step "runtime user uid $UID_RUNTIME, /etc/hosts"
chroot "$ROOTFS" groupadd --system --gid 10002 sgx_prv
chroot "$ROOTFS" useradd --system --uid $UID_RUNTIME --gid 0 --groups sgx_prv \
    --home-dir /enclave --create-home enclave
cat > "$ROOTFS/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
rm -rf "$ROOTFS/var/cache/apt/archives/"*.deb "$ROOTFS/var/lib/apt/lists/"* 2>/dev/null || true

step "done: $ROOTFS (use it as --base dir:$ROOTFS)"
