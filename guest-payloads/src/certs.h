/* SPDX-License-Identifier: MIT */
/*
 * certs.h - bounded walk of the host-written certificate table (GHCB spec,
 * extended guest request): 24-byte entries {GUID[16], offset u32, length
 * u32}, offsets from the table start, terminated by an all-zero entry.
 * The buffer is shared memory written by an untrusted host.
 */
#ifndef SNPLAB_CERTS_H
#define SNPLAB_CERTS_H

#include <stdint.h>

#define CERT_ENTRY_SIZE 24

struct certs_extent {
	uint64_t len;		/* bytes worth keeping: [0, len) */
	uint32_t nentries;	/* non-terminator entries seen */
	uint32_t truncated;	/* 1: no terminator or an entry ran past the limit */
};

/* How many bytes of the buffer [buf_gpa, +npages pages) the guest may read:
 * the part inside its own area [area_gpa, +area_pages pages); 0 if buf_gpa
 * is outside the area.  Never overflows, whatever npages is. */
uint64_t certs_readable_len(uint64_t buf_gpa, uint64_t npages, uint64_t area_gpa,
			    uint64_t area_pages);

/* Walk the table in buf[0, limit) and compute the extent: the end of the
 * table (terminator included) or the largest offset + length, whichever is
 * larger, clipped to limit.  Reads nothing at or beyond buf + limit; each
 * byte is read at most once. */
void certs_table_extent(const volatile uint8_t *buf, uint64_t limit, struct certs_extent *out);

#endif
