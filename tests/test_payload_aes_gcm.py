"""The guest payload's own AES-256-GCM (guest-payloads/src/aes_gcm.c), compiled for the host by
the harness: NIST GCM test vectors, tag rejection, and random cross-checks against `cryptography`.
"""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snplab.payload import run_harness

# AES-256 test cases with 96-bit IVs, typed from the public specs: McGrew & Viega, "The Galois/
# Counter Mode of Operation", test cases 13-16; NIST CAVP gcmEncryptExtIV256.rsp (first Count of
# three [PTlen/AADlen] groups).  (key, iv, pt, aad, ct, tag), hex.
NIST_VECTORS = [
    ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("00" * 32, "00" * 12, "00" * 16, "", "cea7403d4d606b6e074ec5d3baf39d18",
     "d0d1c8a799996bf0265b98b5d48ab919"),
    ("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"), "",
     ("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"),
     "b094dac5d93471bdec1a502270e3cc6c"),
    ("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"),
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     ("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"),
     "76fc6ece0f4e1768cddf8853bb2d551b"),
    ("b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4", "516c33929df5a3284ff463d7",
     "", "", "", "bdc1ac884d332457a1d2664f168c76f0"),
    ("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22", "0d18e06c7c725ac9e362e1ce",
     "2db5168e932556f8089a0622981d017d", "", "fa4362189661d163fcd6a56d8bf0405a",
     "d636ac1bbedd5cc3ee727dc2ab4a9489"),
    ("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b", "ac93a1a6145299bde902f21a",
     "2d71bcfa914e4ac045b2aa60955fad24", "1e0889016f67601c8ebea4943bc23ad6",
     "8995ae2e6df3dbf96fac7b7137bae67f", "eca5aa77d51d4a0a14d9c51e1da474ab"),
]


def h(s: str) -> str:
    return s or "-"


def test_nist_vectors_seal_and_open() -> None:
    cmds = []
    for key, iv, pt, aad, ct, tag in NIST_VECTORS:
        cmds.append(f"gcm_seal {key} {iv} {h(aad)} {h(pt)}")
        cmds.append(f"gcm_open {key} {iv} {h(aad)} {h(ct)} {tag}")
    out = run_harness(cmds)
    assert len(out) == 2 * len(NIST_VECTORS)
    for i, (key, iv, pt, aad, ct, tag) in enumerate(NIST_VECTORS):
        assert out[2 * i] == f"{h(ct)} {tag}", f"vector {i} seal"
        assert out[2 * i + 1] == f"OK {h(pt)}", f"vector {i} open"
        # the typed vector itself agrees with an independent implementation
        ref = AESGCM(bytes.fromhex(key)).encrypt(bytes.fromhex(iv), bytes.fromhex(pt),
                                                 bytes.fromhex(aad) or None)
        assert ref.hex() == ct + tag


def _flip(hexstr: str, byte: int) -> str:
    b = bytearray.fromhex(hexstr)
    b[byte] ^= 0x01
    return b.hex()


def test_open_rejects_any_modification() -> None:
    key, iv, _, aad, ct, tag = NIST_VECTORS[3]
    cases = [
        (key, iv, aad, ct, _flip(tag, 0)),
        (key, iv, aad, ct, _flip(tag, 15)),
        (key, iv, aad, _flip(ct, 0), tag),
        (key, iv, aad, _flip(ct, len(ct) // 2 - 1), tag),   # last (partial) block
        (key, iv, _flip(aad, 19), ct, tag),
        (key, _flip(iv, 11), aad, ct, tag),
        (_flip(key, 31), iv, aad, ct, tag),
        (key, iv, aad, ct[:-2], tag),                       # truncated ciphertext
        (key, iv, "-", ct, tag),                            # AAD dropped
    ]
    out = run_harness([f"gcm_open {k} {i} {a} {c} {t}" for k, i, a, c, t in cases])
    assert out == ["FAIL"] * len(cases)


def test_random_cases_match_cryptography() -> None:
    rng = random.Random(20240607)
    lengths = [0, 1, 15, 16, 17, 31, 32, 33, 95, 96, 97, 255, 1216, 4000]
    cases = []
    for n in range(120):
        key, iv = rng.randbytes(32), rng.randbytes(12)
        pt = rng.randbytes(lengths[n] if n < len(lengths) else rng.randrange(0, 300))
        aad = rng.randbytes(rng.choice([0, 1, 16, 20, 48, rng.randrange(0, 80)]))
        cases.append((key, iv, pt, aad))
    cmds = [f"gcm_seal {k.hex()} {i.hex()} {h(a.hex())} {h(p.hex())}" for k, i, p, a in cases]
    out = run_harness(cmds)
    for (key, iv, pt, aad), line in zip(cases, out, strict=True):
        ct_hex, tag_hex = line.split()
        ref = AESGCM(key).encrypt(iv, pt, aad or None)
        assert bytes.fromhex(ct_hex.replace("-", "")) + bytes.fromhex(tag_hex) == ref
    # and the C code opens what cryptography sealed
    opens = []
    for key, iv, pt, aad in cases[:40]:
        ref = AESGCM(key).encrypt(iv, pt, aad or None)
        opens.append(f"gcm_open {key.hex()} {iv.hex()} {h(aad.hex())} {h(ref[:-16].hex())} "
                     f"{ref[-16:].hex()}")
    assert run_harness(opens) == [f"OK {h(pt.hex())}" for _, _, pt, _ in cases[:40]]


@pytest.mark.parametrize("length", [16, 48, 1216])
def test_open_leaves_output_untouched_on_bad_tag(length: int) -> None:
    """gcm_open verifies before it decrypts: on a bad tag the output buffer is not written."""
    key, iv = bytes(range(32)), bytes(12)
    ref = AESGCM(key).encrypt(iv, bytes(length), None)
    bad_tag = bytes(b ^ 0xFF for b in ref[-16:])
    out = run_harness([f"gcm_open {key.hex()} {iv.hex()} - {ref[:-16].hex()} {bad_tag.hex()}"])
    assert out == ["FAIL"]
