#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Fetch this host's VCEK and the ASK/ARK from AMD KDS for the current TCB and chip ID, install the
# certificate blob the VMM serves (in place, under the exclusive lock running VMMs respect), and
# verify it against the host. Run again after every firmware/TCB update.
#   provision-certs.sh [BLOB]     default $SNPLAB_CERT_BLOB or /var/lib/snplab/cert-blob.bin
# Offline: put ark.pem, ask.pem and vcek.der in a directory and use
#   snplab host certs build --dir DIR -o BLOB
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py=.venv/bin/python
blob="${1:-${SNPLAB_CERT_BLOB:-/var/lib/snplab/cert-blob.bin}}"
"$py" -m snplab.cli host certs fetch -o "$blob" --dir "$(dirname "$blob")/certs"
"$py" -m snplab.cli host certs verify "$blob"
