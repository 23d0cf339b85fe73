"""An HTTP/1.1 request head, read the one way both sides of the X-Client-Cert trust boundary read it.

cvlan-front strips what a node sends in X-Client-Cert and adds the certificate it verified itself;
the controller's lean server believes that header on its proxy socket. If the two parsers split a
head into lines or fields differently -- a bare CR or LF that ends a line for one and not the other,
a folded line, a space before the colon, two Content-Lengths -- a node could smuggle a header (a
forged certificate, a second request) past the front. So both parse with this module, and what it
refuses, both refuse with the same status: a head is well-formed here or it is not forwarded at all.

The rules are RFC 9112's, taken strictly: every line ends with CRLF; no control character but HTAB
anywhere; the request line is three fields separated by single spaces, the method a token and the
version HTTP/1.x; each header line is a token, a colon, and a value (no obs-fold, no whitespace
before the colon); Content-Length is ASCII digits and appears at most once, as does X-Client-Cert;
a Content-Length beside a Transfer-Encoding is refused; the head is at most MAX_HEAD bytes."""

from __future__ import annotations

MAX_HEAD = 16 * 1024
"""The longest request head either side reads (without the blank line that ends it)."""
MAX_LENGTH_DIGITS = 12
"""A Content-Length of more digits is refused before int() (no node request is near 10^12 bytes)."""
TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""RFC 9110 5.6.2: what a token (a method, a header name) is made of."""
CONTROL = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
"""Control characters, CR and LF among them: none may stand in a line (HTAB may)."""
_NOT_CONTROL = bytes(b for b in range(256) if b not in CONTROL)
"""What bytes.translate deletes to leave only a head's control characters (a C loop, no regex)."""
SINGLE = (b"content-length", b"x-client-cert")
"""Fields a head carries at most once: two would leave the reader to choose, and readers differ."""


class HeadError(ValueError):
    """A request head that is not well-formed: the status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead:
    """A well-formed request head: its request line, its header lines as received, and their fields
    (lower-case name, value without surrounding whitespace) in order."""

    __slots__ = ("request_line", "method", "target", "version", "lines", "fields", "length")

    def __init__(
        self,
        request_line: bytes,
        lines: list[bytes],
        fields: list[tuple[bytes, bytes]],
        parts: list[bytes] | None = None,
    ) -> None:
        self.request_line = request_line
        self.method, self.target, self.version = parts or request_line.split(b" ")
        self.lines = lines
        self.fields = fields
        self.length = -1
        """The Content-Length, or -1 when the head has none."""

    def get(self, name: bytes) -> bytes | None:
        """The value of the field `name` (lower case), the first if it is repeated; None if absent."""
        for n, v in self.fields:
            if n == name:
                return v
        return None


def head_end(buf: bytes | bytearray) -> int:
    """Where the head in `buf` ends (the index of the blank line's CRLF CRLF), -1 while it may still
    end in time, HeadError (431) once it cannot: the head would be longer than MAX_HEAD."""
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0 and len(buf) >= MAX_HEAD + 4:
        raise HeadError(431, "request head too large")
    return end


_TOKENS: set[bytes] = set()
"""Header names already found to be tokens: a node sends the same few on every request."""
_MAX_TOKENS = 256


def is_token(b: bytes) -> bool:
    if b in _TOKENS:
        return True
    ok = bool(b) and not b.translate(None, TCHAR)
    if ok and len(_TOKENS) < _MAX_TOKENS:
        _TOKENS.add(b)
    return ok


def parse_request_head(head: bytes) -> RequestHead:
    """The request head `head` (the bytes before the blank line that ends it), or HeadError."""
    if len(head) > MAX_HEAD:
        raise HeadError(431, "request head too large")
    lines = head.split(b"\r\n")
    # Its only control characters must be the CRLFs that end its lines.
    if head.translate(None, _NOT_CONTROL) != b"\r\n" * (len(lines) - 1):
        raise HeadError(400, "bare CR or LF, or a control character, in the request head")
    request_line = lines[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not is_token(parts[0]) or not parts[1]:
        raise HeadError(400, "malformed request line")
    fields = []
    length, chunked = -1, False
    seen: set[bytes] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or (name not in _TOKENS and not is_token(name)):  # the set first: no call
            # no folded lines, no space before the colon: nothing another parser could read as
            # another header than this one
            raise HeadError(400, "malformed header line (the name is not a token)")
        lname = name.lower()
        value = value.strip(b" \t")
        if lname in SINGLE:
            if lname in seen:
                raise HeadError(400, f"repeated {name.decode('latin-1')}")
            seen.add(lname)
            if lname == b"content-length":
                if not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
                    raise HeadError(400, "malformed Content-Length")
                length = int(value)
        elif lname == b"transfer-encoding":
            chunked = True
        fields.append((lname, value))
    if chunked and length >= 0:
        raise HeadError(400, "both Content-Length and Transfer-Encoding")
    got = RequestHead(request_line, lines[1:], fields, parts)
    got.length = length
    return got
