"""cvlan-front's parked long-polls (front/park.py): which wake forwards which poll again, without sockets."""

from __future__ import annotations

import time
from pathlib import Path

from cvlan.front.backend import BackendPool, Pending
from cvlan.front.park import EventStream, Parking, parked_answer


class _Conn:
    """A parked node connection: records what the front did with its poll."""

    def __init__(self, gen: int = 0) -> None:
        self.park_cid = -1
        self.park_backend = 0
        self.park_until = 0.0
        self.poll_gen = gen
        self.forwarded = 0
        self.expired = 0

    def reforward(self) -> None:
        self.forwarded += 1

    def park_expired(self) -> None:
        self.expired += 1


class _Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def _ready(clock: _Clock) -> Parking:
    p = Parking(Path("/nonexistent"), now=clock)
    p.on_ready()
    return p


def test_the_controllers_parked_header_is_taken_out_of_the_answer() -> None:
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Cvlan-Parked: 7 3 30\r\nX-Request-Id: r\r\n\r\nab"
    assert parked_answer(resp) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: r\r\n\r\nab",
        7,
        3,
        30,
    )
    # only in the head: a body that happens to hold the bytes is an ordinary answer
    assert (
        parked_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n\r\nX-Cvlan-Parked: 1 1 1\r\n") is None
    )


def test_a_wake_forwards_the_cvlans_parked_polls_and_no_others() -> None:
    clock = _Clock()
    p = _ready(clock)
    a, b, other = _Conn(p.gen), _Conn(p.gen), _Conn(p.gen)
    assert p.park(a, 1, 0, 30) and p.park(b, 1, 0, 30) and p.park(other, 2, 0, 30)
    p.woken(1, 1)
    assert (a.forwarded, b.forwarded, other.forwarded) == (1, 1, 0)
    assert p.parked == 1 and a.park_cid == -1
    # the wait of the one left ends: answered here, once
    clock.t += 30
    p.expire()
    p.expire()
    assert (other.expired, a.expired) == (1, 0) and p.parked == 0


def test_a_wake_heard_before_the_answer_that_parks_forwards_the_poll_again_at_once() -> None:
    p = _ready(_Clock())
    p.woken(1, 5)  # the stream was faster than the answer, parked at wake count 4
    late = _Conn(p.gen)
    assert not p.park(late, 1, 4, 30)
    assert p.park(_Conn(p.gen), 1, 5, 30)


def test_polls_parked_without_the_stream_are_forwarded_again_when_it_is_back() -> None:
    clock = _Clock()
    p = Parking(Path("/nonexistent"), now=clock)
    before = _Conn(p.gen)
    assert p.park(before, 1, 0, 30)  # the stream is not up: kept, to be asked again
    p.on_ready()
    assert before.forwarded == 1 and p.parked == 0
    # a poll forwarded under the previous stream is forwarded again at once
    stale = _Conn(p.gen - 1)
    assert not p.park(stale, 1, 0, 30)
    # the stream is lost: what is parked stays parked, and is asked again on the next stream
    kept = _Conn(p.gen)
    assert p.park(kept, 1, 0, 30)
    p.on_lost()
    assert kept.forwarded == 0 and not p.streams[0].latest
    p.on_ready()
    assert kept.forwarded == 1


def test_a_closed_connection_leaves_nothing_parked() -> None:
    clock = _Clock()
    p = _ready(clock)
    c = _Conn(p.gen)
    p.park(c, 3, 0, 10)
    p.unpark(c)
    p.woken(3, 1)
    clock.t += 11
    p.expire()
    assert (c.forwarded, c.expired, p.parked, p.streams[0].by_cvlan) == (0, 0, 0, {})


def test_the_event_stream_is_read_line_by_line_in_any_pieces() -> None:
    p = Parking(Path("/nonexistent"), now=_Clock())
    c = _Conn(1)
    p.park(c, 9, 0, 30)
    done = object()
    s = EventStream(p, done)  # type: ignore[arg-type]
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nready\n4 1\n9 2\n"
    for i in range(len(data)):
        s.data_received(data[i : i + 1])
    assert p.ready and p.streams[0].latest == {4: 1, 9: 2}
    assert c.forwarded == 1  # at ready (parked before it); nothing parked under 9 after that


def test_woken_polls_queue_behind_every_other_request() -> None:
    # A CVLAN of thousands woken at once: its polls go to the controller when nothing else waits, so
    # an unrelated request waits for at most the one in progress, not for all of them.
    pool = BackendPool(Path("/nonexistent"), size=0)  # no connection of its own opens
    sent: list[bytes] = []

    class Conn:
        backend = pool.backends[0]

        def start(self, pending: Pending) -> None:
            sent.append(pending.request)

    for i in range(3):
        pool.submit(b"woken-%d" % i, False, lambda *_: None, later=True)
    pool.submit(b"discover", False, lambda *_: None)
    conn = Conn()
    for _ in range(4):
        pool.release(conn)  # type: ignore[arg-type]
    assert sent == [b"discover", b"woken-0", b"woken-1", b"woken-2"]
    # and both queues are answered 502 when they waited too long
    answered: list[object] = []
    pool.submit(b"a", False, lambda r, k, b: answered.append(r), later=True)
    pool.submit(b"b", False, lambda r, k, b: answered.append(r))
    pool.sweep(time.monotonic() + pool.queue_timeout + 1)
    assert answered == [None, None]


def test_with_two_controllers_a_poll_waits_for_the_stream_of_the_one_that_answered_it() -> None:
    told: list[tuple[int, bool]] = []
    p = Parking([Path("/a"), Path("/b")], now=_Clock(), health=lambda i, up: told.append((i, up)))
    p.on_ready(0)
    p.on_ready(1)
    a, b = _Conn(p.gen), _Conn(p.gen)
    assert p.park(a, 1, 3, 30, backend=0) and p.park(b, 1, 7, 30, backend=1)
    # each controller counts its own wakes: controller 1's count says nothing of controller 0's polls
    p.woken(1, 8, backend=1)
    assert (a.forwarded, b.forwarded) == (0, 1)
    assert not p.park(_Conn(p.gen), 1, 7, 30, backend=1) and p.park(_Conn(p.gen), 1, 7, 30, backend=0)
    # controller 0's stream is lost while 1's is up: what 0 parked goes to the controller that is up
    p.on_lost(0)
    assert a.forwarded == 1 and p.streams[0].by_cvlan == {}
    # an answer 0 gave before it went is not parked under it; it is forwarded again at once
    assert not p.park(_Conn(p.gen), 1, 3, 30, backend=0)
    assert told == [(0, True), (1, True), (0, False)]


def test_with_every_stream_lost_polls_stay_parked_until_one_is_back() -> None:
    p = Parking([Path("/a"), Path("/b")], now=_Clock())
    p.on_ready(0)
    c = _Conn(p.gen)
    assert p.park(c, 1, 0, 30, backend=0)
    p.on_lost(0)  # no other stream is up: kept
    assert c.forwarded == 0 and p.park(_Conn(p.gen), 2, 0, 30, backend=0)
    p.on_ready(1)  # the other controller's stream: everything parked under a lost stream goes again
    assert c.forwarded == 1 and p.parked == 0
