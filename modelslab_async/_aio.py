"""Small anyio helpers for the hot paths."""

from __future__ import annotations

import anyio


async def acquire(limiter: anyio.CapacityLimiter, token: object) -> None:
    """``limiter.acquire_on_behalf_of(token)`` without anyio's two checkpoints when a token
    is free at once: a slot is taken per item, per submit and per fetch, and each checkpoint
    is a trip round the event loop. Waits (fairly, behind earlier waiters) when none is."""
    try:
        limiter.acquire_on_behalf_of_nowait(token)
    except anyio.WouldBlock:
        await limiter.acquire_on_behalf_of(token)
