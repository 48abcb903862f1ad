/* SPDX-License-Identifier: MIT */
/*
 * aes_gcm.c - AES-256-GCM (NIST SP 800-38D) with 96-bit IVs.
 *
 * AES state: four columns held as little-endian 32-bit words (byte 0 of a
 * column = row 0).  Round r output column j takes row i from input column
 * j+i (ShiftRows) through table Te_i (SubBytes + MixColumns).  The tables
 * are generated at build time by tools/gen_aes_tables.c.
 *
 * GHASH: field elements are two big-endian 64-bit halves (bit 0 of byte 0,
 * the coefficient of x^0, is the most significant bit of `hi`).  X*H is
 * evaluated nibble by nibble with the 16-entry table n*H (Shoup), from the
 * last nibble to the first: Z = Z*x^4 + M[nibble].
 */
#include "aes_gcm.h"
#include "aes_tables.h"

static inline uint32_t load_le32(const uint8_t *p)
{
	uint32_t v;

	__builtin_memcpy(&v, p, 4);
	return v;
}

static inline void store_le32(uint8_t *p, uint32_t v)
{
	__builtin_memcpy(p, &v, 4);
}

static inline uint64_t load_be64(const uint8_t *p)
{
	uint64_t v;

	__builtin_memcpy(&v, p, 8);
	return __builtin_bswap64(v);
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
	v = __builtin_bswap64(v);
	__builtin_memcpy(p, &v, 8);
}

static inline uint32_t sub_word(uint32_t w)
{
	return (uint32_t)aes_sbox[w & 0xff] | (uint32_t)aes_sbox[(w >> 8) & 0xff] << 8 |
	       (uint32_t)aes_sbox[(w >> 16) & 0xff] << 16 | (uint32_t)aes_sbox[w >> 24] << 24;
}

void aes256_expand_key(struct aes256_key *k, const uint8_t key[32])
{
	uint32_t *w = k->rk;
	uint32_t rcon = 1;
	int i;

	for (i = 0; i < 8; i++)
		w[i] = load_le32(key + 4 * i);
	for (i = 8; i < 60; i++) {
		uint32_t t = w[i - 1];

		if (i % 8 == 0) {
			t = sub_word((t >> 8) | (t << 24)) ^ rcon;	/* RotWord, SubWord, Rcon */
			rcon <<= 1;
		} else if (i % 8 == 4) {
			t = sub_word(t);
		}
		w[i] = w[i - 8] ^ t;
	}
}

#define B0(x) ((x) & 0xff)
#define B1(x) (((x) >> 8) & 0xff)
#define B2(x) (((x) >> 16) & 0xff)
#define B3(x) ((x) >> 24)

#define AES_ROUND(d0, d1, d2, d3, s0, s1, s2, s3, rk)                                   \
	do {                                                                              \
		d0 = aes_te0[B0(s0)] ^ aes_te1[B1(s1)] ^ aes_te2[B2(s2)] ^ aes_te3[B3(s3)] ^ (rk)[0]; \
		d1 = aes_te0[B0(s1)] ^ aes_te1[B1(s2)] ^ aes_te2[B2(s3)] ^ aes_te3[B3(s0)] ^ (rk)[1]; \
		d2 = aes_te0[B0(s2)] ^ aes_te1[B1(s3)] ^ aes_te2[B2(s0)] ^ aes_te3[B3(s1)] ^ (rk)[2]; \
		d3 = aes_te0[B0(s3)] ^ aes_te1[B1(s0)] ^ aes_te2[B2(s1)] ^ aes_te3[B3(s2)] ^ (rk)[3]; \
	} while (0)

#define AES_LAST(s0, s1, s2, s3)                                                          \
	((uint32_t)aes_sbox[B0(s0)] | (uint32_t)aes_sbox[B1(s1)] << 8 |                     \
	 (uint32_t)aes_sbox[B2(s2)] << 16 | (uint32_t)aes_sbox[B3(s3)] << 24)

/* Encrypt the four columns c[] in place. */
static inline void aes256_core(const struct aes256_key *k, uint32_t c[4])
{
	const uint32_t *rk = k->rk;
	uint32_t s0 = c[0] ^ rk[0], s1 = c[1] ^ rk[1], s2 = c[2] ^ rk[2], s3 = c[3] ^ rk[3];
	uint32_t t0, t1, t2, t3;
	int r;

	for (r = 0; r < 6; r++) {	/* rounds 1..12, two per iteration */
		AES_ROUND(t0, t1, t2, t3, s0, s1, s2, s3, rk + 4);
		AES_ROUND(s0, s1, s2, s3, t0, t1, t2, t3, rk + 8);
		rk += 8;
	}
	AES_ROUND(t0, t1, t2, t3, s0, s1, s2, s3, rk + 4);	/* round 13 */
	rk += 8;						/* round 14: no MixColumns */
	c[0] = AES_LAST(t0, t1, t2, t3) ^ rk[0];
	c[1] = AES_LAST(t1, t2, t3, t0) ^ rk[1];
	c[2] = AES_LAST(t2, t3, t0, t1) ^ rk[2];
	c[3] = AES_LAST(t3, t0, t1, t2) ^ rk[3];
}

void aes256_encrypt_block(const struct aes256_key *k, const uint8_t in[16], uint8_t out[16])
{
	uint32_t c[4];
	int i;

	for (i = 0; i < 4; i++)
		c[i] = load_le32(in + 4 * i);
	aes256_core(k, c);
	for (i = 0; i < 4; i++)
		store_le32(out + 4 * i, c[i]);
}

void gcm_init(struct gcm_key *k, const uint8_t key[32])
{
	static const uint8_t zero[16];
	uint8_t h[16];
	uint64_t vh, vl;
	int i, j;

	aes256_expand_key(&k->aes, key);
	aes256_encrypt_block(&k->aes, zero, h);
	vh = load_be64(h);
	vl = load_be64(h + 8);
	/* M[8] = H (nibble bit 3 = x^0), M[4] = H*x, M[2] = H*x^2, M[1] = H*x^3 */
	k->hh[0] = k->hl[0] = 0;
	for (i = 8; i > 0; i >>= 1) {
		k->hh[i] = vh;
		k->hl[i] = vl;
		{
			uint64_t carry = vl & 1;

			vl = (vl >> 1) | (vh << 63);
			vh = (vh >> 1) ^ ((0 - carry) & (0xE1ULL << 56));
		}
	}
	for (i = 2; i < 16; i <<= 1)
		for (j = 1; j < i; j++) {
			k->hh[i + j] = k->hh[i] ^ k->hh[j];
			k->hl[i + j] = k->hl[i] ^ k->hl[j];
		}
}

#define GH_STEP(n)                                                \
	do {                                                      \
		unsigned int rem_ = (unsigned int)zl & 0xf;       \
		zl = (zh << 60) | (zl >> 4);                      \
		zh = (zh >> 4) ^ ghash_rem4[rem_] ^ k->hh[(n)];   \
		zl ^= k->hl[(n)];                                 \
	} while (0)

#define GH_BYTE(v)                       \
	do {                             \
		GH_STEP((v) & 0xf);      \
		GH_STEP(((v) >> 4) & 0xf); \
		(v) >>= 8;               \
	} while (0)

/* (xh, xl) := (xh, xl) * H */
static inline void ghash_mul(const struct gcm_key *k, uint64_t *xh, uint64_t *xl)
{
	uint64_t v = *xl, zh, zl;
	unsigned int n = (unsigned int)v & 0xf;

	zh = k->hh[n];
	zl = k->hl[n];
	GH_STEP((v >> 4) & 0xf);
	v >>= 8;
	GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v);
	v = *xh;
	GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v); GH_BYTE(v);
	*xh = zh;
	*xl = zl;
}

/* Absorb len bytes (zero-padded to whole blocks). */
static void ghash_update(const struct gcm_key *k, uint64_t *xh, uint64_t *xl,
			 const uint8_t *p, size_t len)
{
	while (len >= 16) {
		*xh ^= load_be64(p);
		*xl ^= load_be64(p + 8);
		ghash_mul(k, xh, xl);
		p += 16;
		len -= 16;
	}
	if (len) {
		uint8_t blk[16] = { 0 };
		size_t i;

		for (i = 0; i < len; i++)
			blk[i] = p[i];
		*xh ^= load_be64(blk);
		*xl ^= load_be64(blk + 8);
		ghash_mul(k, xh, xl);
	}
}

/* out = in XOR keystream, counter blocks IV || ctr (ctr from 2). */
static void gcm_ctr(const struct gcm_key *k, const uint8_t iv[GCM_IV_LEN],
		    const uint8_t *in, uint8_t *out, size_t len)
{
	uint32_t iv0 = load_le32(iv), iv1 = load_le32(iv + 4), iv2 = load_le32(iv + 8);
	uint32_t ctr = 2;

	while (len) {
		uint32_t c[4] = { iv0, iv1, iv2, __builtin_bswap32(ctr) };
		size_t n = len < 16 ? len : 16, i;

		aes256_core(&k->aes, c);
		if (n == 16) {
			uint64_t a, b, ka = (uint64_t)c[1] << 32 | c[0], kb = (uint64_t)c[3] << 32 | c[2];

			__builtin_memcpy(&a, in, 8);
			__builtin_memcpy(&b, in + 8, 8);
			a ^= ka;
			b ^= kb;
			__builtin_memcpy(out, &a, 8);
			__builtin_memcpy(out + 8, &b, 8);
		} else {
			uint8_t ks[16];

			for (i = 0; i < 4; i++)
				store_le32(ks + 4 * i, c[i]);
			for (i = 0; i < n; i++)
				out[i] = in[i] ^ ks[i];
		}
		in += n;
		out += n;
		len -= n;
		ctr++;
	}
}

static void gcm_tag(const struct gcm_key *k, const uint8_t iv[GCM_IV_LEN],
		    uint64_t xh, uint64_t xl, size_t aad_len, size_t len, uint8_t tag[16])
{
	uint32_t j0[4] = { load_le32(iv), load_le32(iv + 4), load_le32(iv + 8),
			   __builtin_bswap32(1) };
	int i;

	xh ^= (uint64_t)aad_len * 8;
	xl ^= (uint64_t)len * 8;
	ghash_mul(k, &xh, &xl);
	aes256_core(&k->aes, j0);
	store_be64(tag, xh);
	store_be64(tag + 8, xl);
	for (i = 0; i < 4; i++) {
		uint8_t e[4];
		int b;

		store_le32(e, j0[i]);
		for (b = 0; b < 4; b++)
			tag[4 * i + b] ^= e[b];
	}
}

void gcm_seal(const struct gcm_key *k, const uint8_t iv[GCM_IV_LEN],
	      const uint8_t *aad, size_t aad_len,
	      const uint8_t *in, uint8_t *out, size_t len, uint8_t tag[GCM_TAG_LEN])
{
	uint64_t xh = 0, xl = 0;

	ghash_update(k, &xh, &xl, aad, aad_len);
	gcm_ctr(k, iv, in, out, len);
	ghash_update(k, &xh, &xl, out, len);
	gcm_tag(k, iv, xh, xl, aad_len, len, tag);
}

int gcm_open(const struct gcm_key *k, const uint8_t iv[GCM_IV_LEN],
	     const uint8_t *aad, size_t aad_len,
	     const uint8_t *in, uint8_t *out, size_t len, const uint8_t tag[GCM_TAG_LEN])
{
	uint64_t xh = 0, xl = 0;
	uint8_t want[16];
	unsigned int diff = 0;
	int i;

	ghash_update(k, &xh, &xl, aad, aad_len);
	ghash_update(k, &xh, &xl, in, len);
	gcm_tag(k, iv, xh, xl, aad_len, len, want);
	for (i = 0; i < 16; i++)
		diff |= (unsigned int)(want[i] ^ tag[i]);
	if (diff)
		return -1;
	gcm_ctr(k, iv, in, out, len);
	return 0;
}
