"""A one-time nudge to glibc's allocator for asyncio's socket reads (see settle_allocator).

This changes the whole process, so only an application may call it: the command line's
``main()`` does, and the benchmarks' harness. The library never does. No imports from the
package: a test loads this module alone in a fresh interpreter.
"""

from __future__ import annotations

#: One throw-away block bigger than asyncio's 256 KiB socket read buffer (see below).
_SETTLE_BYTES = 1 << 20
_allocator_settled = False


def settle_allocator() -> None:
    """Once per process: allocate and free one 1 MiB block, so that glibc serves asyncio's
    socket read buffers from its heap instead of a fresh ``mmap`` each.

    asyncio's selector transport reads every socket with ``recv(256 KiB)`` into a new bytes
    object. glibc gives an allocation that large its own ``mmap`` until the process has
    freed an mmapped block at least as big (its ``M_MMAP_THRESHOLD`` then adapts upward, as
    ``mallopt(3)`` documents). A process that only reads small answers on kept-alive
    connections, which is what a batch of API calls does, can stay below that for its whole
    life and then pays ``mmap`` + ``mremap`` + ``munmap`` and a page fault on every read
    (cpython#85451). Whether a process starts below depends on its imports and hash seed.
    One calloc'd block, freed at once (its pages are never touched), puts the process where
    any process that has handled a large body is anyway. Elsewhere than glibc it is a
    harmless allocation.
    """
    global _allocator_settled
    if not _allocator_settled:
        _allocator_settled = True
        block = bytes(_SETTLE_BYTES)  # calloc: an mmapped block whose pages stay untouched
        del block


__all__ = ["settle_allocator"]
