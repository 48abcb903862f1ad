/* SPDX-License-Identifier: MIT */
/*
 * msg.c - build, seal and open SNP guest messages (see msg.h).
 */
#include "msg.h"

#include "guest.h"

uint16_t msg_build_payload(uint8_t *p, uint8_t msg_type, const uint8_t report_data[64], uint32_t vmpl)
{
	uint16_t len;
	unsigned int i;

	switch (msg_type) {
	case SNP_MSG_KEY_REQ:		/* root key VCEK, KEY_SEL 0, no fields mixed in */
		len = 32;
		break;
	case SNP_MSG_TSC_INFO_REQ:	/* all reserved */
		len = 128;
		break;
	default:			/* MSG_REPORT_REQ: REPORT_DATA, VMPL, KEY_SEL = 0 */
		len = 96;
		break;
	}
	for (i = 0; i < len; i++)
		p[i] = 0;
	if (msg_type == SNP_MSG_KEY_REQ) {
		__builtin_memcpy(p + 0x10, &vmpl, 4);
	} else if (msg_type != SNP_MSG_TSC_INFO_REQ) {
		for (i = 0; i < 64; i++)
			p[i] = report_data[i];
		__builtin_memcpy(p + 0x40, &vmpl, 4);
	}
	return len;
}

static void msg_iv(uint8_t iv[GCM_IV_LEN], uint64_t seqno)
{
	wr_le64(iv, seqno);
	iv[8] = iv[9] = iv[10] = iv[11] = 0;
}

void msg_seal(uint8_t *msg, const struct gcm_key *k, uint64_t seqno, uint8_t type,
	      uint8_t version, uint8_t vmpck, uint16_t len)
{
	uint8_t iv[GCM_IV_LEN];
	unsigned int i;

	for (i = 0; i < MSG_HDR_SIZE; i++)
		msg[i] = 0;
	wr_le64(msg + MSG_OFF_SEQNO, seqno);
	msg[MSG_OFF_ALGO] = SNP_AEAD_AES_256_GCM;
	msg[MSG_OFF_HDR_VERSION] = MSG_HDR_VER;
	msg[MSG_OFF_HDR_SZ] = MSG_HDR_SIZE;
	msg[MSG_OFF_TYPE] = type;
	msg[MSG_OFF_VERSION] = version;
	msg[MSG_OFF_MSG_SZ] = (uint8_t)len;
	msg[MSG_OFF_MSG_SZ + 1] = (uint8_t)(len >> 8);
	msg[MSG_OFF_VMPCK] = vmpck;
	msg_iv(iv, seqno);
	gcm_seal(k, iv, msg + MSG_AAD_OFF, MSG_AAD_LEN, msg + MSG_HDR_SIZE, msg + MSG_HDR_SIZE,
		 len, msg + MSG_OFF_AUTHTAG);
}

uint32_t msg_check_header(const uint8_t *hdr, const struct msg_expect *e, uint16_t *len)
{
	uint16_t hdr_sz = (uint16_t)(hdr[MSG_OFF_HDR_SZ] | hdr[MSG_OFF_HDR_SZ + 1] << 8);

	*len = (uint16_t)(hdr[MSG_OFF_MSG_SZ] | hdr[MSG_OFF_MSG_SZ + 1] << 8);
	if (hdr[MSG_OFF_ALGO] != SNP_AEAD_AES_256_GCM || hdr[MSG_OFF_HDR_VERSION] != MSG_HDR_VER ||
	    hdr_sz != MSG_HDR_SIZE || hdr[MSG_OFF_TYPE] != (uint8_t)(e->type + 1) ||
	    hdr[MSG_OFF_VERSION] != e->version || hdr[MSG_OFF_VMPCK] != e->vmpck)
		return SNPLAB_DEC_BAD_HEADER;
	if (rd_le64(hdr + MSG_OFF_SEQNO) != e->seqno + 1)
		return SNPLAB_DEC_BAD_SEQNO;
	if (*len > MSG_MAX_PAYLOAD)
		return SNPLAB_DEC_BAD_SIZE;
	return SNPLAB_DEC_OK;
}

uint32_t msg_open(const uint8_t *msg, const struct gcm_key *k, uint16_t len, uint8_t *out)
{
	uint8_t iv[GCM_IV_LEN];

	msg_iv(iv, rd_le64(msg + MSG_OFF_SEQNO));
	if (gcm_open(k, iv, msg + MSG_AAD_OFF, MSG_AAD_LEN, msg + MSG_HDR_SIZE, out, len,
		     msg + MSG_OFF_AUTHTAG))
		return SNPLAB_DEC_BAD_TAG;
	return SNPLAB_DEC_OK;
}
