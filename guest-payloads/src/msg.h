/* SPDX-License-Identifier: MIT */
/*
 * msg.h - SNP guest messages (SNP firmware ABI "guest message" format):
 * 96-byte header, AES-256-GCM with AAD = header bytes 0x30..0x5F,
 * IV = msg_seqno (LE u64) || 4 zero bytes, tag in header bytes 0x00..0x0F.
 */
#ifndef SNPLAB_MSG_H
#define SNPLAB_MSG_H

#include <stdint.h>

#include "aes_gcm.h"

/* Header field offsets (Linux struct snp_guest_msg_hdr) */
#define MSG_OFF_AUTHTAG 0x00
#define MSG_OFF_SEQNO 0x20
#define MSG_OFF_ALGO 0x30
#define MSG_OFF_HDR_VERSION 0x31
#define MSG_OFF_HDR_SZ 0x32
#define MSG_OFF_TYPE 0x34
#define MSG_OFF_VERSION 0x35
#define MSG_OFF_MSG_SZ 0x36
#define MSG_OFF_VMPCK 0x3C
#define MSG_AAD_OFF 0x30
#define MSG_AAD_LEN 0x30

#define SNP_AEAD_AES_256_GCM 1
#define MSG_HDR_VER 1

/* Message types (Linux enum msg_type) */
#define SNP_MSG_KEY_REQ 3
#define SNP_MSG_REPORT_REQ 5
#define SNP_MSG_REPORT_RSP 6
#define SNP_MSG_TSC_INFO_REQ 17

/* MSG_REPORT_RSP payload */
#define REPORT_RSP_OFF_STATUS 0x00
#define REPORT_RSP_OFF_SIZE 0x04
#define REPORT_RSP_OFF_REPORT 0x20

struct msg_expect {
	uint64_t seqno;		/* the request's seqno; the response must carry seqno + 1 */
	uint8_t type;		/* the request's msg_type; the response must carry type + 1 */
	uint8_t version;
	uint8_t vmpck;
};

/* Write the plaintext request payload for msg_type into p; returns its length
 * (KEY_REQ 32, TSC_INFO_REQ 128, anything else a 96-byte MSG_REPORT_REQ). */
uint16_t msg_build_payload(uint8_t *p, uint8_t msg_type, const uint8_t report_data[64], uint32_t vmpl);

/* msg holds the plaintext payload (len bytes) at offset 0x60: fill in the
 * header and encrypt the payload in place. */
void msg_seal(uint8_t *msg, const struct gcm_key *k, uint64_t seqno, uint8_t type,
	      uint8_t version, uint8_t vmpck, uint16_t len);

/* Check a (private copy of a) response header; *len = msg_sz.
 * Returns SNPLAB_DEC_OK or SNPLAB_DEC_BAD_HEADER/BAD_SEQNO/BAD_SIZE. */
uint32_t msg_check_header(const uint8_t *hdr, const struct msg_expect *e, uint16_t *len);

/* Verify the tag of the (checked, private) response msg and decrypt its
 * len-byte payload into out.  Returns SNPLAB_DEC_OK or SNPLAB_DEC_BAD_TAG. */
uint32_t msg_open(const uint8_t *msg, const struct gcm_key *k, uint16_t len, uint8_t *out);

#endif
