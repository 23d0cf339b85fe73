"""One request-head parser on both sides of the X-Client-Cert trust boundary: cvlan-front (which
strips a node's X-Client-Cert and adds the one it verified) and the controller's lean server (which
believes it). Each nasty head is fed to both sides; both must give the same verdict -- refused with
the same status, or taken with the same length and certificate -- or a node could smuggle a header
past the front."""

from __future__ import annotations

import pytest

from cvlan.controller.nodeapi import lean
from cvlan.front import server
from cvlan.wire import httphead
from cvlan.wire import nodeproto as wire

POLL = b"POST /v1/poll HTTP/1.1\r\nHost: c\r\nContent-Type: " + wire.CT_PROTO.encode()
CL = b"\r\nContent-Length: 3"


def head(*lines: bytes, length: bytes = b"Content-Length: 3") -> bytes:
    """A poll's head with these header lines (the bytes before the blank line)."""
    return b"\r\n".join((POLL, *lines, length) if length else (POLL, *lines))


NASTY: list[tuple[str, bytes, int]] = [
    ("bare LF ends a line for one parser", head(b"X-A: 1\nX-Client-Cert: forged"), 400),
    ("bare CR ends a line for one parser", head(b"X-A: 1\rX-Client-Cert: forged"), 400),
    ("LF line ends throughout", head(b"X-A: 1").replace(b"\r\n", b"\n"), 400),
    ("duplicate Content-Length", head(b"Content-Length: 0"), 400),
    ("duplicate equal Content-Length", head(b"Content-Length: 3"), 400),
    ("Content-Length list", head(length=b"Content-Length: 3, 3"), 400),
    ("signed Content-Length", head(length=b"Content-Length: +3"), 400),
    ("Content-Length of 13 digits", head(length=b"Content-Length: 0000000000003"), 400),
    ("non-ASCII digits in Content-Length", head(length="Content-Length: ٣".encode()), 400),
    ("Content-Length beside Transfer-Encoding", head(b"Transfer-Encoding: chunked"), 400),
    ("space before the colon", head(b"X-Client-Cert : forged"), 400),
    ("tab before the colon", head(b"X-Client-Cert\t: forged"), 400),
    ("obs-fold with a space", head(b"X-A: 1", b" X-Client-Cert: folded"), 400),
    ("obs-fold with a tab", head(b"X-A: 1", b"\tmore"), 400),
    ("two X-Client-Cert", head(b"X-Client-Cert: a", b"X-Client-Cert: b"), 400),
    ("empty header name", head(b": empty"), 400),
    ("name with @", head(b"X@Y: 1"), 400),
    ("name with a quote", head(b'X"Y: 1'), 400),
    ("name with a slash", head(b"X/Y: 1"), 400),
    ("name with a byte above 0x7f", head(b"X\xffY: 1"), 400),
    ("line without a colon", head(b"X-A 1"), 400),
    ("NUL in a value", head(b"X-A: one\x00two"), 400),
    ("vertical tab in a value", head(b"X-A: one\x0btwo"), 400),
    ("DEL in a value", head(b"X-A: one\x7f"), 400),
    ("two spaces in the request line", POLL.replace(b"POST ", b"POST  ", 1) + CL, 400),
    (
        "HTTP/2.0 in the request line",
        POLL.replace(b"HTTP/1.1", b"HTTP/2.0", 1) + CL,
        400,
    ),
    ("method not a token", POLL.replace(b"POST", b"PO(ST", 1) + CL, 400),
    ("huge head", head(b"X-Pad: " + b"a" * httphead.MAX_HEAD), 431),
    ("huge head of many lines", head(*[b"X-Pad: " + b"a" * 90] * 200), 431),
]

GOOD: list[tuple[str, bytes, int]] = [
    ("a node's poll", head(b"X-Client-Cert: -----BEGIN%20CERTIFICATE-----"), 3),
    ("no certificate", head(), 3),
    ("every token character in a name", head(b"x!#$%&'*+-.^_`|~09az: v"), 3),
    ("obs-text and a tab in a value", head(b"X-A: \xe9\tv"), 3),
    ("spaces and tabs around values", head(b"X-A:\t v \t", length=b"Content-Length:  3 "), 3),
    ("a head of exactly the largest size", None, 3),  # filled in below
]


def _largest() -> bytes:
    h = head(b"X-Pad: ")
    return h.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (httphead.MAX_HEAD - len(h)))


def front_verdict(raw: bytes) -> tuple[int, int, bytes | None]:
    """(status, length, certificate): 0 and what the front forwards, or the status it answers."""
    try:
        h = server.check_head(raw)
    except httphead.HeadError as e:
        return e.status, -1, None
    return 0, h.length, h.get(b"x-client-cert")


def lean_verdict(raw: bytes) -> tuple[int, int, bytes | None]:
    """(status, length, certificate): 0 and what the lean server takes, or the status it answers."""
    try:
        h = lean.parse_head(raw)
    except httphead.HeadError as e:
        return e.status, -1, None
    assert h is not None, "a poll as a front forwards it is the lean server's own"
    return 0, h.length, h.cert or None


@pytest.mark.parametrize(("why", "raw", "status"), NASTY, ids=[c[0] for c in NASTY])
def test_both_sides_refuse_a_nasty_head_alike(why: str, raw: bytes, status: int) -> None:
    assert front_verdict(raw) == lean_verdict(raw) == (status, -1, None), why


@pytest.mark.parametrize(("why", "raw", "length"), GOOD, ids=[c[0] for c in GOOD])
def test_both_sides_take_a_good_head_alike(why: str, raw: bytes | None, length: int) -> None:
    raw = raw if raw is not None else _largest()
    assert len(raw) <= httphead.MAX_HEAD
    front, inner = front_verdict(raw), lean_verdict(raw)
    assert front == inner and front[:2] == (0, length), why


def test_a_head_is_complete_at_its_blank_line_and_too_large_past_the_limit() -> None:
    assert httphead.head_end(b"GET / HTTP/1.1\r\nHost: c\r\n") == -1
    assert httphead.head_end(b"GET / HTTP/1.1\r\nHost: c\r\n\r\nbody") == 23
    assert httphead.head_end(b"x" * httphead.MAX_HEAD + b"\r\n\r") == -1  # may still end in time
    with pytest.raises(httphead.HeadError) as e:
        httphead.head_end(b"x" * (httphead.MAX_HEAD + 1) + b"\r\n\r\n")
    assert e.value.status == 431
