"""scrypt password hashes: `scrypt$N$r$p$salt$hash` (salt and hash in unpadded base64).

hashlib.scrypt is memory-hard and releases the GIL, so verification runs in a thread and
never stalls the event loop; `fastgw hash-password` prints a hash for the config.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

# Interactive-login parameters (RFC 7914 §2: N=2^14, r=8, p=1): ~16 MiB and tens of ms.
DEFAULT_N, DEFAULT_R, DEFAULT_P = 1 << 14, 8, 1
_FORMAT = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")


@dataclass(frozen=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        """Slow on purpose; call it off the event loop."""
        derived = hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * self.n * self.r + (1 << 20),
            dklen=len(self.digest),
        )
        return hmac.compare_digest(derived, self.digest)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=32
    )
    return f"scrypt${n}${r}${p}${_b64encode(salt)}${_b64encode(digest)}"


def parse_hash(text: str) -> PasswordHash | None:
    """The parsed hash, or None when `text` is not a usable scrypt hash."""
    match = _FORMAT.fullmatch(text)
    if match is None:
        return None
    n, r, p = int(match[1]), int(match[2]), int(match[3])
    if n < 2 or n & (n - 1) or n > 1 << 20 or not 0 < r <= 32 or not 0 < p <= 16:
        return None
    try:
        salt, digest = _b64decode(match[4]), _b64decode(match[5])
    except ValueError:
        return None
    if len(salt) < 8 or len(digest) < 16:
        return None
    return PasswordHash(n, r, p, salt, digest)
