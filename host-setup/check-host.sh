#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Can this machine run snplab on the snp platform? Thin wrapper around `snplab host check`.
# Exit 0: yes. Exit 1: no (each failed check is printed with a fix). Extra args go to the command,
# e.g. --json, --certs PATH, --no-probe.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" -m snplab.cli host check "$@"
