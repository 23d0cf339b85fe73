"""FrameQueue: bounded by frames and by bytes, oldest dropped first, drops reported."""

from __future__ import annotations

import pytest

from cvlan.common.framequeue import FRAME_OVERHEAD, FrameQueue


def test_byte_bound_drops_oldest_first() -> None:
    q = FrameQueue(max_frames=1000, max_bytes=3 * (1000 + FRAME_OVERHEAD))
    dropped = [q.push(bytes([i]) * 1000) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert len(q) == 3 and q.nbytes == 3 * (1000 + FRAME_OVERHEAD)
    assert [q.pop()[0] for _ in range(3)] == [2, 3, 4]
    assert q.nbytes == 0 and not q


def test_frame_bound_and_tiny_frames_are_charged_overhead() -> None:
    q = FrameQueue(max_frames=2, max_bytes=1 << 20)
    assert [q.push(b"x") for _ in range(4)] == [0, 0, 1, 1]
    q = FrameQueue(max_frames=1000, max_bytes=10 * FRAME_OVERHEAD)
    assert sum(q.push(b"") for _ in range(25)) == 15
    assert len(q) == 10


def test_one_frame_larger_than_the_bound_is_kept_alone() -> None:
    q = FrameQueue(max_frames=10, max_bytes=100)
    q.push(b"a")
    assert q.push(bytes(500)) == 1
    assert len(q) == 1 and q.clear() == 1 and q.nbytes == 0


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FrameQueue(0, 10)
