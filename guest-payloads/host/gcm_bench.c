/* SPDX-License-Identifier: MIT */
/*
 * gcm_bench.c - callgrind subject for bench/payload_instructions.sh: runs
 * the payload's aes_gcm.c, built with the guest's code-generation flags.
 * Each mode calls one bench_* function; the script counts instructions
 * inside it only (callgrind --toggle-collect=bench_<mode>) for two sizes and
 * takes the difference, so fixed costs cancel out.
 *
 *   gcm-bench seal NBLOCKS | open NBLOCKS | init N | report N
 * "report" = the crypto of one guest report exchange, N times: seal a
 * 96-byte MSG_REPORT_REQ, open a 0x4c0-byte MSG_REPORT_RSP (48-byte AAD).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aes_gcm.h"

static uint8_t buf[1 << 20];
static const uint8_t key[32] = { 1, 2, 3 }, iv[12] = { 4 }, aad[48] = { 5 };

__attribute__((noinline)) void bench_seal(const struct gcm_key *k, unsigned long n, uint8_t *tag);
__attribute__((noinline)) int bench_open(const struct gcm_key *k, unsigned long n, const uint8_t *tag);
__attribute__((noinline)) void bench_init(struct gcm_key *k, unsigned long n);
__attribute__((noinline)) int bench_report(const struct gcm_key *k, unsigned long n, const uint8_t *tag);

void bench_seal(const struct gcm_key *k, unsigned long n, uint8_t *tag)
{
	gcm_seal(k, iv, aad, sizeof(aad), buf, buf, n * 16, tag);
}

int bench_open(const struct gcm_key *k, unsigned long n, const uint8_t *tag)
{
	return gcm_open(k, iv, aad, sizeof(aad), buf, buf + sizeof(buf) / 2, n * 16, tag);
}

void bench_init(struct gcm_key *k, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++)
		gcm_init(k, key);
}

int bench_report(const struct gcm_key *k, unsigned long n, const uint8_t *tag)
{
	uint8_t t[16];
	unsigned long i;
	int bad = 0;

	for (i = 0; i < n; i++) {
		gcm_seal(k, iv, aad, sizeof(aad), buf + 8192, buf + 8192, 96, t);
		bad |= gcm_open(k, iv, aad, sizeof(aad), buf, buf + 4096, 0x4c0, tag);
	}
	return bad;
}

int main(int argc, char **argv)
{
	struct gcm_key k;
	uint8_t tag[16];
	unsigned long n;

	if (argc != 3)
		return 2;
	n = strtoul(argv[2], NULL, 0);
	if (n * 16 > sizeof(buf) / 2)
		return 2;
	gcm_init(&k, key);
	if (!strcmp(argv[1], "seal")) {
		bench_seal(&k, n, tag);
	} else if (!strcmp(argv[1], "open")) {
		bench_seal(&k, n, tag);
		if (bench_open(&k, n, tag))
			return 1;
	} else if (!strcmp(argv[1], "init")) {
		bench_init(&k, n);
	} else if (!strcmp(argv[1], "report")) {
		gcm_seal(&k, iv, aad, sizeof(aad), buf, buf, 0x4c0, tag);
		if (bench_report(&k, n, tag))
			return 1;
	} else {
		return 2;
	}
	printf("%02x\n", buf[0] ^ tag[0]);
	return 0;
}
