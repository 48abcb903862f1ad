/* SPDX-License-Identifier: MIT */
/*
 * aes_gcm.h - AES-256-GCM for the guest payload (no SSE, no heap).
 *
 * T-table AES (encryption direction only: GCM never decrypts blocks) and
 * Shoup's 4-bit-table GHASH.  The same file is compiled for the host by the
 * unit tests (NIST vectors, cross-check with `cryptography`).  IVs are
 * always 96 bits, which is all SNP guest messages use.
 */
#ifndef SNPLAB_AES_GCM_H
#define SNPLAB_AES_GCM_H

#include <stddef.h>
#include <stdint.h>

#define GCM_IV_LEN 12
#define GCM_TAG_LEN 16

struct aes256_key {
	uint32_t rk[60];		/* 15 round keys, columns as LE words */
};

struct gcm_key {
	struct aes256_key aes;
	uint64_t hh[16];		/* Shoup table: n*H, high 64 bits */
	uint64_t hl[16];		/* ... low 64 bits */
};

void aes256_expand_key(struct aes256_key *k, const uint8_t key[32]);
void aes256_encrypt_block(const struct aes256_key *k, const uint8_t in[16], uint8_t out[16]);

void gcm_init(struct gcm_key *k, const uint8_t key[32]);

/* Encrypt len bytes in -> out (may alias) and produce the 16-byte tag. */
void gcm_seal(const struct gcm_key *k, const uint8_t iv[GCM_IV_LEN],
	      const uint8_t *aad, size_t aad_len,
	      const uint8_t *in, uint8_t *out, size_t len, uint8_t tag[GCM_TAG_LEN]);

/* Verify the tag first; only then decrypt in -> out (may alias).
 * Returns 0 on success, -1 on a tag mismatch (out is left untouched). */
int gcm_open(const struct gcm_key *k, const uint8_t iv[GCM_IV_LEN],
	     const uint8_t *aad, size_t aad_len,
	     const uint8_t *in, uint8_t *out, size_t len, const uint8_t tag[GCM_TAG_LEN]);

#endif
