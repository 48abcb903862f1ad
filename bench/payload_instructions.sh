#!/bin/sh
# bench/payload_instructions.sh - instructions per 16-byte block of the guest
# payload's AES-256-GCM, counted with callgrind on a host build of the same
# C file with the guest's code-generation flags (make -C guest-payloads bench).
#
# This computation runs at CPL3, natively even on the nested-KVM CI box where
# CPL0 code goes through KVM's emulator (~1M instructions/s): there these
# counts were the payload's speed, now they are its CPU cost (bench/guest_run.py
# times whole guests).  Prints one "name value" per line.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
make -s -C "$here/guest-payloads" bench >/dev/null
bin="$here/guest-payloads/build/host/gcm-bench"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# count MODE N -> instructions executed inside bench_MODE
count() {
	valgrind --tool=callgrind --callgrind-out-file="$tmp/out" \
		--toggle-collect="bench_$1" "$bin" "$1" "$2" >/dev/null 2>&1
	awk '/^summary:/ { print $2 }' "$tmp/out"
}

per_unit() {	# MODE N1 N2 -> (Ir(N2) - Ir(N1)) / (N2 - N1)
	a=$(count "$1" "$2")
	b=$(count "$1" "$3")
	echo $(( (b - a) / ($3 - $2) ))
}

echo "seal_instructions_per_block $(per_unit seal 256 1280)"
echo "open_instructions_per_block $(per_unit open 256 1280)"
echo "key_setup_instructions $(per_unit init 4 12)"
echo "report_exchange_instructions $(per_unit report 2 6)"
echo "guest_elf_bytes $(stat -c %s "$here/guest-payloads/build/snplab-guest.elf" 2>/dev/null || echo 0)"
