"""cvlan-front's pool over several controllers (front/backend.py), against small HTTP servers on real
Unix sockets: balancing, a controller that dies with requests in flight, one that is down, one that
comes back (docs/FRONT.md, "Several controllers")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cvlan.front.backend import BackendPool

pytestmark = pytest.mark.timeout(60)


class Controller:
    """Answers each request with its own name, or holds them all unanswered (`hold`)."""

    def __init__(self, path: Path, name: bytes) -> None:
        self.path = path
        self.name = name
        self.hold = False
        self.hold_paths: set[bytes] = set()
        """Requests to these paths are left unanswered (a registration waiting on the database)."""
        self.got: list[bytes] = []
        self.held: list[asyncio.StreamWriter] = []
        """The connections of the requests left unanswered, one entry each."""
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Controller:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(x.split(b":")[1])
                        for x in head.split(b"\r\n")
                        if x.lower().startswith(b"content-length")
                    ),
                    0,
                )
                path = head.split(b" ")[1]
                self.got.append(path + b" " + await r.readexactly(length))
                if self.hold or path in self.hold_paths:
                    self.held.append(w)
                    continue
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(self.name), self.name))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def kill(self) -> None:
        """As a SIGKILL would: the listener goes and every connection ends, answered or not."""
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        self.path.unlink()


def _request(path: str, body: bytes = b"x") -> bytes:
    return b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


async def _send(
    pool: BackendPool, path: str, body: bytes = b"x", retry: bool = True, slow: bool = False
) -> bytes | None:
    fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
    pool.submit(_request(path, body), False, lambda r, k, b: fut.set_result(r), retry=retry, slow=slow)
    got = await asyncio.wait_for(fut, 20)
    return None if got is None else got.rpartition(b"\r\n\r\n")[2]


async def _until(cond: object) -> None:
    for _ in range(200):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not within 10 s")


async def test_requests_are_balanced_over_the_controllers(tmp_path: Path) -> None:
    a = await Controller(tmp_path / "a", b"A").start()
    b = await Controller(tmp_path / "b", b"B").start()
    pool = BackendPool([a.path, b.path], size=4)
    answers = await asyncio.gather(*(_send(pool, "/v1/poll", b"%d" % i) for i in range(40)))
    assert sorted(set(answers)) == [b"A", b"B"]  # type: ignore[type-var]
    assert len(a.got) + len(b.got) == 40 and min(len(a.got), len(b.got)) >= 4
    pool.close()


async def test_a_dead_controllers_safe_requests_go_to_the_other_and_the_rest_get_502(tmp_path: Path) -> None:
    a = await Controller(tmp_path / "a", b"A").start()
    a.hold = True  # what it is sent is in flight when it dies
    pool = BackendPool([a.path, tmp_path / "b"], size=2)  # b is not up yet: both requests go to a
    retried: list[int] = []
    pool.on_retry = lambda: retried.append(1)
    poll = asyncio.create_task(_send(pool, "/v1/poll", b"p"))
    report = asyncio.create_task(_send(pool, "/v1/report", b"r", retry=False))
    await _until(lambda: len(a.got) == 2)
    b = await Controller(tmp_path / "b", b"B").start()
    a.kill()
    assert await poll == b"B" and b.got == [b"/v1/poll p"]  # sent again: a poll is safe to repeat
    assert await report is None  # not sent again (its denied flows would be stored twice): 502
    assert retried == [1]
    # the dead controller is left out: everything goes to the living one, nothing is refused
    answers = await asyncio.gather(*(_send(pool, "/v1/discover") for _ in range(10)))
    assert answers == [b"B"] * 10
    pool.close()


async def test_a_controller_that_is_down_is_skipped_and_taken_back_when_it_answers(tmp_path: Path) -> None:
    a = await Controller(tmp_path / "a", b"A").start()
    down = tmp_path / "b"  # nobody listens there yet
    pool = BackendPool([a.path, down], size=2)
    assert await asyncio.gather(*(_send(pool, "/v1/poll") for _ in range(10))) == [b"A"] * 10
    b = await Controller(down, b"B").start()
    pool.backends[1].down_until = 0.0  # its backoff is over
    pool.sweep(asyncio.get_running_loop().time())
    await _until(lambda: pool.backends[1].conns)
    answers = await asyncio.gather(*(_send(pool, "/v1/poll", b"%d" % i) for i in range(20)))
    assert b"B" in answers and len(b.got) >= 1
    pool.close()


async def test_with_every_controller_down_requests_get_502_at_once(tmp_path: Path) -> None:
    pool = BackendPool([tmp_path / "a", tmp_path / "b"], size=2)
    assert await _send(pool, "/v1/poll") is None
    assert await _send(pool, "/v1/discover") is None
    pool.close()


async def test_slow_requests_hold_at_most_half_the_connections_and_polls_pass(tmp_path: Path) -> None:
    """Registrations that wait at the controller (here: never answered) take at most half of its
    connections; a poll sent after six of them is answered at once on the other half."""
    c = await Controller(tmp_path / "a.sock", b"a").start()
    c.hold_paths.add(b"/v1/register")
    pool = BackendPool([c.path], size=4)
    regs = [asyncio.create_task(_send(pool, "/v1/register", b"r%d" % i, slow=True)) for i in range(6)]
    await _until(lambda: sum(g.startswith(b"/v1/register") for g in c.got) == 2)
    assert await asyncio.wait_for(_send(pool, "/v1/poll", b"p"), 2) == b"a"
    assert sum(g.startswith(b"/v1/register") for g in c.got) == 2  # the other four still queued
    assert len(pool.slow_waiting) == 4 and pool.backends[0].slow_busy == 2
    # The controller answers registrations again: the queued ones go as the held ones are answered.
    c.hold_paths.clear()
    for w in c.held:  # the two held ones, answered now
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    got = await asyncio.wait_for(asyncio.gather(*regs), 10)
    assert got == [b"a"] * 6 and pool.backends[0].slow_busy == 0
    pool.close()
