"""AMD Key Distribution Service (KDS) client: the VCEK for a chip and TCB, and the ASK/ASVK + ARK.

URLs (shared/reference/verify.md §c; AMD KDS spec 57230 as used by go-sev-guest and snpguest)::

    VCEK        /vcek/v1/{Milan|Genoa}/{hwid: 128 hex}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=
                /vcek/v1/Turin/{hwid8: 16 hex}?fmcSPL=&blSPL=&teeSPL=&snpSPL=&ucodeSPL=   → DER
    VCEK chain  /vcek/v1/{P}/cert_chain                                                   → PEM ASK, ARK
    VLEK chain  /vlek/v1/{P}/cert_chain                                                   → PEM ASVK, ARK

KDS rate-limits (HTTP 429, sometimes 503): retried with exponential back-off honouring
Retry-After, capped (go-sev-guest's default getter retries for 2 minutes with ≤ 30 s steps).
Answers are cached on disk by URL: a VCEK never changes for a (chip, TCB), nor does a chain.
The HTTP opener is injectable (anything with ``open(request, timeout=...)`` like
``urllib.request.OpenerDirector``) so tests run without a network.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography import x509

from snplab.abi.tcb import TcbVersion, TcbLayout
from snplab.attest import chain
from snplab.attest.certs import CertLoadError, Role, load_certificate, load_certificates, role_and_product, sha256_fingerprint

KDS_BASE = "https://kdsintf.amd.com"
RETRY_STATUS = (429, 503)
MAX_RESPONSE = 1 << 20
_PRODUCT_PATH = {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}


class KdsError(RuntimeError):
    """KDS could not give a usable answer (unreachable, HTTP error, rate limit, bad chain)."""


def product_path(product: str) -> str:
    try:
        return _PRODUCT_PATH[product.lower()]
    except KeyError:
        raise KdsError(f"KDS serves no product {product!r} (milan, genoa, turin)") from None


def vcek_url(product: str, chip_id: bytes, tcb: TcbVersion, base: str = KDS_BASE) -> str:
    p = product_path(product)
    if tcb.layout is TcbLayout.TURIN:
        if len(chip_id) < 8:
            raise KdsError("a Turin VCEK needs the first 8 bytes of the chip ID")
        hwid = chip_id[:8].hex()
        spl = f"fmcSPL={tcb.fmc}&blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    else:
        if len(chip_id) != 64:
            raise KdsError(f"a {p} VCEK needs the 64-byte chip ID, got {len(chip_id)} bytes")
        if not any(chip_id):
            raise KdsError("the chip ID is all zero (MASK_CHIP_ID set?): KDS cannot look up the VCEK")
        hwid = chip_id.hex()
        spl = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    return f"{base}/vcek/v1/{p}/{hwid}?{spl}"


def chain_url(product: str, signer: str = "vcek", base: str = KDS_BASE) -> str:
    if signer not in ("vcek", "vlek"):
        raise KdsError(f"signer must be vcek or vlek, not {signer!r}")
    return f"{base}/{signer}/v1/{product_path(product)}/cert_chain"


@dataclass(frozen=True)
class Chain:
    ask: x509.Certificate  # ASK (vcek) or ASVK (vlek)
    ark: x509.Certificate


class KdsClient:
    def __init__(self, opener: Any | None = None, cache_dir: str | Path | None = None, *,
                 base: str = KDS_BASE, max_tries: int = 6, base_delay: float = 1.0, max_delay: float = 30.0,
                 timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.opener = opener or urllib.request.build_opener()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.base, self.max_tries, self.base_delay, self.max_delay = base, max_tries, base_delay, max_delay
        self.timeout, self.sleep = timeout, sleep
        self.requests = 0  # network requests made (cache hits excluded)

    # -- transport ---------------------------------------------------------------------------

    def _cache_path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".bin")

    def _delay(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        retry_after = (headers or {}).get("Retry-After")
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_delay)
        return min(self.base_delay * (2 ** attempt), self.max_delay)

    def get(self, url: str) -> bytes:
        """GET ``url`` (cache first); retry 429/503 with back-off. Raises KdsError."""
        cached = self._cache_path(url)
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        host = url.split("/")[2] if "//" in url else url
        for attempt in range(self.max_tries):
            self.requests += 1
            req = urllib.request.Request(url, headers={"User-Agent": "snplab"})
            try:
                with self.opener.open(req, timeout=self.timeout) as resp:
                    body = resp.read(MAX_RESPONSE + 1)
                break
            except urllib.error.HTTPError as e:
                if e.code in RETRY_STATUS and attempt + 1 < self.max_tries:
                    self.sleep(self._delay(attempt, e.headers))
                    continue
                if e.code in RETRY_STATUS:
                    raise KdsError(f"KDS rate limit: HTTP {e.code} for {url} after {self.max_tries} tries") from None
                raise KdsError(f"KDS answered HTTP {e.code} {e.reason} for {url}") from None
            except urllib.error.URLError as e:
                raise KdsError(f"cannot reach {host}: {e.reason}") from None
            except (OSError, ValueError) as e:
                raise KdsError(f"cannot reach {host}: {e}") from None
        if len(body) > MAX_RESPONSE:
            raise KdsError(f"KDS answer for {url} is larger than {MAX_RESPONSE} bytes")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(body)
            os.replace(tmp, cached)
        return body

    # -- documents ---------------------------------------------------------------------------

    def chain(self, product: str, signer: str, ark_pins: Mapping[str, str]) -> Chain:
        """The ASK/ASVK and ARK, with the ARK pinned and both signatures checked."""
        url = chain_url(product, signer, self.base)
        try:
            certs = load_certificates(self.get(url))
        except CertLoadError as e:
            raise KdsError(f"{url}: {e}") from None
        roles = {role_and_product(c)[0]: c for c in certs}
        want = Role.ASK if signer == "vcek" else Role.ASVK
        if len(certs) != 2 or Role.ARK not in roles or want not in roles:
            raise KdsError(f"{url}: expected {want.value.upper()} and ARK, got "
                           f"{[role_and_product(c)[0].value for c in certs]}")
        ark, ask = roles[Role.ARK], roles[want]
        pin = ark_pins.get(product.lower())
        got = sha256_fingerprint(ark)
        if pin is None or got != pin:
            raise KdsError(f"{url}: ARK SHA-256 {got} does not match the pinned {product} ARK {pin}")
        try:
            chain.verify_signed_by(ark, ark)
            chain.verify_signed_by(ask, ark)
        except chain.ChainError as e:
            raise KdsError(f"{url}: {e}") from None
        return Chain(ask=ask, ark=ark)

    def vcek(self, product: str, chip_id: bytes, tcb: TcbVersion, ask: x509.Certificate) -> x509.Certificate:
        """The VCEK for (chip, TCB), checked to be signed by ``ask``."""
        url = vcek_url(product, chip_id, tcb, self.base)
        try:
            cert = load_certificate(self.get(url))
        except CertLoadError as e:
            raise KdsError(f"{url}: {e}") from None
        if role_and_product(cert)[0] is not Role.VCEK:
            raise KdsError(f"{url}: the answer is not a VCEK")
        try:
            chain.verify_signed_by(cert, ask)
        except chain.ChainError as e:
            raise KdsError(f"{url}: {e}") from None
        return cert
