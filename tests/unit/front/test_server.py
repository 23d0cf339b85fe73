"""cvlan-front's per-source accounting and connection budget, without sockets."""

from __future__ import annotations

from typing import Any

from cvlan.front import server


def test_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert server.source_of(("192.0.2.7", 4433)) == "192.0.2.7"
    # one host picks addresses from its whole /64: they are one source
    a = server.source_of(("2001:db8:1:2::1", 4433, 0, 0))
    b = server.source_of(("2001:db8:1:2:ffff:1:2:3", 4433, 0, 0))
    assert a == b == "2001:db8:1:2::/64"
    assert server.source_of(("2001:db8:1:3::1", 4433, 0, 0)) != a
    assert server.source_of(("::ffff:192.0.2.7", 4433, 0, 0)) == "192.0.2.7"


class _Conn:
    """What Front.admit needs of a connection: close() takes it out of the budget."""

    def __init__(self, front: server.Front, source: str) -> None:
        self.front, self.source, self.closed = front, source, False

    def close(self) -> None:
        self.closed = True
        self.front.release(self, self.source)  # type: ignore[arg-type]
        self.front.conns.discard(self)  # type: ignore[arg-type]


def _admit(front: server.Front, source: str) -> tuple[bool, Any]:
    c = _Conn(front, source)
    return front.admit(c, source), c  # type: ignore[arg-type]


def test_budget_pushes_out_the_oldest_uncertified_never_a_verified_one() -> None:
    lim = server.Limits(max_conns=4, max_uncertified=4, max_uncertified_per_addr=2)
    front = server.Front(None, None, lim)  # type: ignore[arg-type]
    ok, verified = _admit(front, "192.0.2.1")
    assert ok
    front.release(verified, "192.0.2.1")  # its handshake ended with a certificate
    olds = [_admit(front, f"192.0.2.{i}")[1] for i in (2, 3, 4)]
    assert len(front.conns) == 4
    # all slots taken: the new connection closes the oldest uncertified one, not the verified one
    ok, new = _admit(front, "192.0.2.5")
    assert ok and olds[0].closed and not verified.closed and not any(o.closed for o in olds[1:])
    # a third connection from one source is refused while two from it are uncertified
    assert [_admit(front, "192.0.2.6")[0] for _ in range(3)] == [True, True, False]
    assert olds[1].closed and olds[2].closed and not verified.closed
    # only verified connections left: a new one is refused
    for c in list(front.uncertified):
        c.close()
    for i in range(3):
        ok, c = _admit(front, "198.51.100.1" if i < 2 else "198.51.100.2")
        front.release(c, c.source)
    assert len(front.conns) == 4 and not front.uncertified
    assert not _admit(front, "203.0.113.1")[0]
