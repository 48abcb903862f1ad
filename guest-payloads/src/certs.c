/* SPDX-License-Identifier: MIT */
/*
 * certs.c - see certs.h.
 */
#include "certs.h"

#include "guest.h"

#define CERTS_MAX_AREA_PAGES (1ULL << 20)

uint64_t certs_readable_len(uint64_t buf_gpa, uint64_t npages, uint64_t area_gpa,
			    uint64_t area_pages)
{
	uint64_t area_len, avail;

	if (area_pages > CERTS_MAX_AREA_PAGES || buf_gpa < area_gpa)
		return 0;
	area_len = area_pages * PAGE_SIZE;
	if (buf_gpa - area_gpa >= area_len)
		return 0;
	avail = area_len - (buf_gpa - area_gpa);
	if (npages > avail / PAGE_SIZE)
		return avail;
	return npages * PAGE_SIZE;
}

void certs_table_extent(const volatile uint8_t *buf, uint64_t limit, struct certs_extent *out)
{
	uint64_t pos, end = 0;

	out->nentries = 0;
	out->truncated = 0;
	out->len = 0;
	if (!limit)
		return;		/* an empty buffer (npages = 0): nothing to keep */
	for (pos = 0;; pos += CERT_ENTRY_SIZE) {
		const volatile uint8_t *e = buf + pos;
		uint32_t offset, length;
		uint8_t guid_or = 0;
		unsigned int i;

		if (limit < CERT_ENTRY_SIZE || pos > limit - CERT_ENTRY_SIZE) {
			/* no terminator inside the buffer: keep all of it */
			out->truncated = 1;
			end = limit;
			break;
		}
		for (i = 0; i < 16; i++)
			guid_or |= e[i];
		offset = rd_le32(e + 16);
		length = rd_le32(e + 20);
		if (!guid_or && !offset && !length) {
			if (pos + CERT_ENTRY_SIZE > end)
				end = pos + CERT_ENTRY_SIZE;
			break;
		}
		out->nentries++;
		if ((uint64_t)offset + length > end)
			end = (uint64_t)offset + length;
	}
	if (end > limit) {
		end = limit;
		out->truncated = 1;
	}
	out->len = end;
}
