"""A FIFO of byte strings bounded by both frame count and bytes, dropping the oldest first.

Used for the relay's per-client send queues and for a node's queue towards a relay. A bound in
frames alone lets a queue of 512 frames hold 512 x 64 KB = 33 MB; the byte bound is what keeps
memory per slow receiver small. Each frame is charged its length plus ``FRAME_OVERHEAD``, about
what CPython spends on a bytes object and its deque slot, so that many tiny frames cannot hold
much more memory than the bound says either.
"""

from __future__ import annotations

from collections import deque

FRAME_OVERHEAD = 64
"""Bytes charged per queued frame on top of its length (bytes object header + deque slot)."""


class FrameQueue:
    """Bounded FIFO; ``push`` returns how many old frames it dropped to make room."""

    __slots__ = ("_frames", "_bytes", "max_frames", "max_bytes")

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("queue bounds must be at least 1")
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self.max_frames = max_frames
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._frames)

    def __bool__(self) -> bool:
        return bool(self._frames)

    @property
    def nbytes(self) -> int:
        """What the queued frames are charged (lengths plus FRAME_OVERHEAD each)."""
        return self._bytes

    def push(self, frame: bytes) -> int:
        """Append frame, dropping the oldest frames while either bound would be exceeded. A frame
        larger than max_bytes on its own is still queued (alone): the bound is never below one
        frame, so the newest packet always gets its chance."""
        cost = len(frame) + FRAME_OVERHEAD
        dropped = 0
        while self._frames and (len(self._frames) >= self.max_frames or self._bytes + cost > self.max_bytes):
            self._bytes -= len(self._frames.popleft()) + FRAME_OVERHEAD
            dropped += 1
        self._frames.append(frame)
        self._bytes += cost
        return dropped

    def pop(self) -> bytes:
        """The oldest frame (IndexError when empty)."""
        frame = self._frames.popleft()
        self._bytes -= len(frame) + FRAME_OVERHEAD
        return frame

    def clear(self) -> int:
        """Drop everything; how many frames were dropped."""
        n = len(self._frames)
        self._frames.clear()
        self._bytes = 0
        return n
