#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Load kvm_amd with SEV-SNP enabled and make it persistent. Prints what it would do unless
# --apply is given (then it must run as root). It cannot fix the BIOS or the firmware: if
# sev_snp stays N afterwards, read `dmesg | grep -i -e SEV -e RMP` and host-setup/README.md.
set -euo pipefail
apply=0
[ "${1:-}" = "--apply" ] && apply=1
conf=/etc/modprobe.d/snplab-kvm-amd.conf
run() {
	if [ "$apply" = 1 ]; then
		echo "+ $*"
		"$@"
	else
		echo "would run: $*"
	fi
}
if [ "$apply" = 1 ] && [ "$(id -u)" != 0 ]; then
	echo "enable-snp.sh: --apply needs root" >&2
	exit 2
fi
if [ "$apply" = 1 ]; then
	echo "options kvm_amd sev=1 sev_es=1 sev_snp=1" > "$conf"
	echo "+ wrote $conf"
else
	echo "would write $conf: options kvm_amd sev=1 sev_es=1 sev_snp=1"
fi
run modprobe ccp
run modprobe -r kvm_amd
run modprobe kvm_amd sev=1 sev_es=1 sev_snp=1
if [ "$apply" = 1 ]; then
	snp="$(cat /sys/module/kvm_amd/parameters/sev_snp 2>/dev/null || echo missing)"
	echo "kvm_amd sev_snp = $snp"
	[ "$snp" = Y ] || [ "$snp" = 1 ]
fi
