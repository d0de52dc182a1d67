"""Give freed heap memory back to the system after a large image, so the resident size falls after a spike;
and the one byte budget that admits work by the memory it may hold (MemoryBudget).

glibc keeps freed memory in its arenas (and raises its mmap threshold after large frees, so the next
large image also lands there); `malloc_trim(0)` returns the free pages of every arena. Elsewhere
(musl, macOS) this is a no-op.
"""

import ctypes
import ctypes.util
import functools
import threading

# Images from this many pixels up (about 12 MB as RGB) are worth a trim; smaller ones are not.
LARGE_IMAGE_PIXELS = 4_000_000


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Trim the C heap; True when the C library has malloc_trim (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class MemoryBudget:
    """Bytes that work in flight may hold at once (IMAGE_MEMORY_BYTES): each decode and each image waiting for
    inference reserves its bound before it allocates or queues, and is refused (not queued) when it would not fit.
    Thread-safe."""

    def __init__(self, limit: int, *, setting: str = "IMAGE_MEMORY_BYTES") -> None:
        self.limit = limit
        self.setting = setting  # what sets `limit`, named in refusals
        self.used = 0
        self._lock = threading.Lock()

    def try_reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self.used + nbytes > self.limit:
                return False
            self.used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes
