"""Seeded, order-independent randomness: every draw is a hash of (seed, purpose, index)."""

from __future__ import annotations

import hashlib
import uuid

_SCALE = 1.0 / float(1 << 64)


def unit(seed: int, purpose: str, index: int, k: int = 0) -> float:
    """A uniform float in [0, 1) determined by ``(seed, purpose, index, k)``."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:{index}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * _SCALE


def uniform(seed: int, purpose: str, index: int, lo: float, hi: float, k: int = 0) -> float:
    """A uniform float in [lo, hi) determined by the arguments."""
    if hi <= lo:
        return lo
    return lo + (hi - lo) * unit(seed, purpose, index, k)


def integer(seed: int, purpose: str, index: int, bound: int) -> int:
    """An integer in [0, bound) determined by the arguments."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % bound


def uuid4(seed: int, purpose: str, index: int) -> str:
    """A version-4-shaped UUID string determined by the arguments."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:{index}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))
