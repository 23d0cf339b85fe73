"""An HTTPS JSON client of the management API whose connections are opened inside a namespace
(cvlan.devtools.lab.nsconnect), so the test process stays in the root namespace and adds no address there."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

from cvlan.devtools.lab.nsconnect import socket_in_netns


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
