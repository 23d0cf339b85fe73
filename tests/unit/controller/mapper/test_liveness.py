"""The liveness buffer's bookkeeping: newest observation wins, a failed write is put back without
overwriting newer ones, and steady polling reuses one record per node."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace
from typing import Any, cast

from cvlan.controller.mapper.liveness import LivenessBuffer
from cvlan.controller.ops.context import OpsContext


class _Clock:
    def __init__(self) -> None:
        self.t = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        self.t += dt.timedelta(seconds=1)
        return self.t


def _buffer() -> LivenessBuffer:
    return LivenessBuffer(cast(OpsContext, SimpleNamespace(now=_Clock().now)))


def test_batch_holds_the_newest_observation_per_node() -> None:
    buf = _buffer()
    buf.seen(1, 3, {"peers_total": 2})
    buf.seen(1, 4)
    buf.endpoints(2, ["198.51.100.1:1"], "eu")
    buf.seen(2, 7)
    buf.health(3, {"peers_total": 1}, None, (1, 1))
    assert len(buf) == 3
    b = buf._take()
    rows = dict(zip(b.ids, zip(b.seen, b.vers, strict=True), strict=True))
    assert rows[1][1] == 4 and rows[2][1] == 7
    assert rows[3][1] == -1  # a report alone keeps the stored version
    assert dict(zip(b.health_ids, b.health, strict=True)) == {1: {"peers_total": 2}, 3: {"peers_total": 1}}
    assert b.eps_ids == [2] and b.eps == [["198.51.100.1:1"]] and b.regions == ["eu"]
    assert len(buf) == 0
    # While the batch is being written its endpoints are still what the map shows.
    assert buf.pending_endpoints(2) == (["198.51.100.1:1"], "eu")


def test_failed_write_is_put_back_and_newer_observations_win() -> None:
    buf = _buffer()
    buf.seen(1, 3, {"peers_total": 2})
    buf.endpoints(1, ["198.51.100.1:1"], "")
    buf.seen(2, 5, {"peers_total": 9})
    b = buf._take()
    buf.seen(2, 6)  # arrives while the write is in flight
    buf.endpoints(2, ["198.51.100.2:2"], "us")
    buf._put_back(b)
    again = buf._take()
    rows = dict(zip(again.ids, again.vers, strict=True))
    assert rows == {1: 3, 2: 6}
    assert dict(zip(again.health_ids, again.health, strict=True)) == {
        1: {"peers_total": 2},
        2: {"peers_total": 9},
    }
    assert dict(zip(again.eps_ids, again.eps, strict=True)) == {
        1: ["198.51.100.1:1"],
        2: ["198.51.100.2:2"],
    }


def test_unchanged_health_is_not_written_again() -> None:
    buf = _buffer()
    buf.seen(1, 1, {"peers_total": 2})
    buf._take()
    buf.seen(1, 1, {"peers_total": 2})
    assert buf._take().health_ids == []


def test_steady_polling_reuses_one_record_per_node() -> None:
    buf = _buffer()
    buf.seen(1, 1)
    record: Any = buf._obs[1]
    for v in range(2, 50):
        buf._take()
        buf.seen(1, v)
    assert buf._obs[1] is record and len(buf._obs) == 1


async def test_stopping_lets_a_write_in_progress_finish_then_flushes_once_more() -> None:
    buf = _buffer()
    writes: list[str] = []
    started = asyncio.Event()

    async def slow_flush() -> int:
        writes.append("start")
        started.set()
        await asyncio.sleep(0.2)  # a database write in progress
        writes.append("done")
        return 0

    buf.flush = slow_flush  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(buf.run(0.01, stop))
    await asyncio.wait_for(started.wait(), 5)  # the first flush began (on a loaded machine, late)
    assert writes == ["start"]
    stop.set()
    await asyncio.wait_for(task, 5)
    # The write in progress was not cancelled; one more flush followed it; nothing is left half-done.
    assert writes == ["start", "done", "start", "done"]


def test_a_poll_that_repeats_the_stored_row_is_not_written_again_until_it_ages() -> None:
    clock = _Clock()  # one second per reading
    buf = LivenessBuffer(cast(OpsContext, SimpleNamespace(now=clock.now)), refresh_s=30)
    buf.seen(1, 7, {"peers_total": 2})
    buf._stored(buf._take())  # committed
    buf.seen(1, 7, {"peers_total": 2})  # nothing new, seconds later
    assert len(buf) == 0
    buf.seen(1, 8)  # a new map version is written at once
    assert len(buf) == 1
    buf._stored(buf._take())
    buf.seen(2, 8)  # a node this process never wrote is written
    buf.seen(1, 8, {"peers_total": 3})  # so is new health
    assert sorted(buf._take().ids) == [1, 2]
    clock.t += dt.timedelta(seconds=31)  # (the batch above was not committed: node 1 ages from its 8)
    buf.seen(1, 8)
    assert len(buf) == 1, "the stored last_seen aged past refresh_s: written again"
    b = buf._take()
    assert b.seen[0] == clock.t
    # A failed write keeps the node pending, so its next repeat is not dropped.
    buf._put_back(b)
    buf.seen(1, 8)
    assert len(buf) == 1


def test_a_poll_that_read_the_clock_already_passes_its_reading_down() -> None:
    """The poll hot path reads the clock once (for the certificate's expiry) and hands it down; the
    buffer then does not read it again."""
    clock = _Clock()
    start = clock.t
    buf = LivenessBuffer(cast(OpsContext, SimpleNamespace(now=clock.now)), refresh_s=30)
    at = start - dt.timedelta(minutes=5)
    buf.seen(1, 7, {"peers_total": 2}, now=at)
    b = buf._take()
    assert b.seen == [at] and clock.t == start, "the clock was not read"
    buf._stored(b)
    # The refresh is judged by the poll's reading too: written again 31 s after the stored one, not 29 s.
    buf.seen(1, 7, now=at + dt.timedelta(seconds=29))
    assert len(buf) == 0
    buf.seen(1, 7, now=at + dt.timedelta(seconds=31))
    assert buf._take().seen == [at + dt.timedelta(seconds=31)] and clock.t == start
