"""A small synchronous JSON client of the management API for the admin CLI."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiError(Exception):
    """A refusal or failure, with the server's one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Client:
    def __init__(self, server: str, token: str, ca_pem: str = "", timeout: float = 30) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.server + path + ("?" + urllib.parse.urlencode(q) if q else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise ApiError(e.code, err.get("code", ""), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise ApiError(e.code, "http", f"HTTP {e.code} from {self.server}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                msg = f"cannot verify the server's certificate at {self.server}: {reason.verify_message}"
            else:
                msg = f"cannot reach {self.server}: {reason}"
            raise ApiError(0, "unreachable", msg) from None
        except (TimeoutError, OSError) as e:
            raise ApiError(0, "unreachable", f"cannot reach {self.server}: {e}") from None
        return json.loads(raw) if raw else None

    def pages(self, path: str, query: dict[str, Any] | None = None, limit: int = 1000) -> list[Any]:
        """Every item of a paginated listing."""
        items: list[Any] = []
        offset = 0
        for _ in range(100_000):
            page = self.call("GET", path, query={**(query or {}), "limit": limit, "offset": offset})
            items.extend(page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                break
        return items
