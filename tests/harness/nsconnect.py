"""Open TCP connections from this process into a named network namespace, and an HTTPS client on top.

setns(CLONE_NEWNET) changes only the calling thread, and a socket keeps the namespace it was
created in; so a short-lived thread enters the namespace, creates the socket and leaves. The test
process itself stays in the root namespace and no address or route is added there."""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import socket
import ssl
import threading
from typing import Any

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in_netns(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in network namespace ns (by name, /run/netns/NAME)."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                result.append(socket.socket(family, kind))
            finally:
                _setns(own)
        except BaseException as e:
            result.append(e)
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=work, name=f"netns-{ns}")
    t.start()
    t.join(timeout=10)
    if not result:
        raise TimeoutError(f"entering namespace {ns} timed out")
    r = result[0]
    if isinstance(r, BaseException):
        raise r
    return r


class _NsHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, ns: str, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._ns = ns
        self._ctx = context

    def connect(self) -> None:
        s = socket_in_netns(self._ns)
        s.settimeout(self.timeout)
        try:
            s.connect((self.host, self.port))
        except OSError:
            s.close()
            raise
        self.sock = self._ctx.wrap_socket(s, server_hostname=self.host)


class NsApi:
    """A small blocking JSON client of the management API, reaching the controller inside a namespace."""

    def __init__(self, ns: str, url: str, token: str, ca_pem: str, timeout: float = 30.0) -> None:
        from urllib.parse import urlparse

        u = urlparse(url)
        assert u.hostname and u.port
        self.ns, self.host, self.port = ns, u.hostname, u.port
        self.token = token
        self.timeout = timeout
        self._ctx = ssl.create_default_context(cadata=ca_pem)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = _NsHTTPSConnection(self.ns, self.host, self.port, self._ctx, self.timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.request(method, path, body)
        if not 200 <= status < 300:
            raise AssertionError(f"{method} {path}: {status}: {data}")
        return data

    def get(self, path: str) -> Any:
        return self.ok("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.ok("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.ok("DELETE", path)
