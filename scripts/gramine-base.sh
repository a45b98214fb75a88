#!/bin/sh
# Make a real Gramine 1.9 base root filesystem from a local Gramine archive:
#
#   scripts/gramine-base.sh ROOTFS
#
# Short for `enclave-build base gramine ROOTFS --archive ARCHIVE` (the command also installs
# Gramine from Gramine's own package repository when given no --archive; see its --help and
# the manual, How-to: Bases and caches). Needs root (mmdebstrap, chroot).
# Environment: GRAMINE_ARCHIVE (default ../shared/gramine/gramine-1.9-debian12-x86_64.tar.gz
# next to the repository), DEBIAN_MIRROR, PYTHON (the Python enclave-build is installed in;
# default the repository's .venv, else python3).
set -eu
[ $# -eq 1 ] || { echo "usage: $0 ROOTFS" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
ARCHIVE=${GRAMINE_ARCHIVE:-$REPO/../shared/gramine/gramine-1.9-debian12-x86_64.tar.gz}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m enclave_build base gramine "$1" --archive "$ARCHIVE" \
    --mirror "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
