"""Whether a node certificate may still use the relay: asked of the controller, cached, and bounded
when the controller cannot answer.

The relay asks ``POST /v1/relay/check`` (mutual TLS with the relay's own certificate) whether each
node still exists, is enabled and still has that key, tenant and CVLAN. The controller's answers
are cached for ``ttl`` seconds. When no answer comes:

* a **definite refusal** (an HTTP 4xx other than 408/429, or an answer that is not the check's:
  the relay was deleted, or its URL is not the controller's relay API) fails closed: the nodes
  asked about are refused;
* **no answer** (connection refused, timeout, 5xx, 429) fails open for at most ``fail_open_s``
  seconds after the controller last answered: nodes the controller last called valid, or never
  saw, keep relaying; nodes it last called revoked stay refused however old that answer is. Past
  the window every node is refused until the controller answers again.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from cvlan.client.bootstrap import ControllerCallError, post_json
from cvlan.relay.bootstrap import RelayIdentity
from cvlan.wire.certid import NodeIdentity

log = logging.getLogger(__name__)

CHECK_PATH = "/v1/relay/check"
CHECK_TIMEOUT_S = 5.0
"""A node waits for its check when it connects: an unreachable controller must not hold it long."""
CACHE_MAX = 100_000
CHECK_BATCH = 1000
"""Nodes per check request: the controller's limit (CHECK_BATCH_MAX), which refuses more with 422."""


class Verdict(StrEnum):
    """What the relay does with a node certificate (values are the refusal reasons in metrics)."""

    VALID = "valid"
    REVOKED = "revoked"
    """The controller said no (now, or last time it answered)."""
    REFUSED = "check_refused"
    """The controller refused to answer the relay (a definite refusal): fail closed."""
    UNCHECKED = "unchecked"
    """The controller has not answered for longer than the fail-open window."""


class FrontError(ControllerCallError):
    """--server points at something that is not the controller's own TLS listener."""


def front_hint(server: str, e: ControllerCallError) -> ControllerCallError:
    """A one-line explanation when the relay API is missing at --server (404: a TLS front that
    forwards only the node API, or a wrong URL) or the relay's certificate did not reach the
    controller (412: a TLS-terminating front in between); e unchanged otherwise."""
    if e.status not in (404, 412):
        return e
    return FrontError(
        f"{server} does not serve the relay API with the relay's certificate (http {e.status}): it looks "
        "like a TLS front such as cvlan-front; give --server the controller's own listener "
        "(its --listen address, see docs/RELAY.md)",
        status=e.status,
    )


class ControllerChecker:
    """Asks the controller which node certificates are still good; see the module docstring."""

    def __init__(
        self,
        server: str,
        identity: RelayIdentity,
        ttl: float = 60.0,
        fail_open_s: float = 300.0,
        now: float | None = None,
    ) -> None:
        self._server = server
        self._url = server + CHECK_PATH
        self._ssl = identity.ssl_context()
        self._ttl = ttl
        self.fail_open_s = fail_open_s
        self._cache: dict[NodeIdentity, tuple[float, bool]] = {}
        self.last_answer = time.monotonic() if now is None else now
        """Monotonic time the controller last answered (start counts: a relay started during a
        controller outage fails open for the window, then closed)."""
        self._closed_logged = False

    def use(self, identity: RelayIdentity) -> None:
        """Authenticate later checks with a renewed relay certificate."""
        self._ssl = identity.ssl_context()

    async def probe(self) -> None:
        """One empty check at start: raises FrontError when --server is not the controller's relay
        API, ControllerCallError when the controller refuses this relay; only logs when the
        controller cannot be reached (the fail-open window then runs from start)."""
        try:
            await self._post([])
        except ControllerCallError as e:
            if e.retryable:
                log.warning("controller not reachable at start", extra={"reason": str(e)})
                return
            raise front_hint(self._server, e) from e
        self.last_answer = time.monotonic()

    async def _post(self, nodes: list[NodeIdentity]) -> list[bool]:
        body = {
            "nodes": [
                {
                    "node_id": n.node_id,
                    "tenant_id": n.tenant_id,
                    "cvlan_id": n.cvlan_id,
                    "wg_key": n.wg_key.hex(),
                }
                for n in nodes
            ]
        }
        out = await post_json(self._url, body, self._ssl, timeout=CHECK_TIMEOUT_S)
        try:
            valid = [bool(v) for v in out["valid"]]
        except (KeyError, TypeError) as e:
            raise ControllerCallError(f"{self._url}: not a relay check answer") from e
        if len(valid) != len(nodes):
            raise ControllerCallError(f"{self._url}: {len(valid)} answers for {len(nodes)} nodes")
        return valid

    async def check(
        self, nodes: list[NodeIdentity], now: float, fresh: bool = False
    ) -> tuple[list[Verdict], str]:
        """A verdict per node, and why the controller gave no answer ("" when it answered or was
        not asked: every answer was cached)."""
        todo = list(dict.fromkeys(n for n in nodes if fresh or self._stale(n, now)))
        error = ""
        refused: set[NodeIdentity] = set()
        if todo:
            try:
                valid = await self._ask(todo)
            except ControllerCallError as e:
                error = str(e)
                if not e.retryable:
                    refused = set(todo)
                log.warning(
                    "revocation check failed; "
                    + ("refusing" if refused else "failing open within the window"),
                    extra={"reason": error},
                )
            else:
                self.last_answer = now
                self._closed_logged = False
                for n, ok in zip(todo, valid, strict=True):
                    self._cache[n] = (now, ok)
                self._prune(now)
        return [self._verdict(n, now, n in refused, bool(error)) for n in nodes], error

    async def _ask(self, todo: list[NodeIdentity]) -> list[bool]:
        """The controller's answers for todo. A refusal of a check sent with a certificate that was
        renewed meanwhile (the controller accepts only the newest) is asked again with the new one,
        so that a renewal cannot look like a definite refusal."""
        ctx = self._ssl
        try:
            return await self._batches(todo)
        except ControllerCallError as e:
            if e.retryable or ctx is self._ssl:
                raise
        return await self._batches(todo)

    async def _batches(self, todo: list[NodeIdentity]) -> list[bool]:
        """In requests the controller accepts (CHECK_BATCH nodes at most)."""
        return [
            v for i in range(0, len(todo), CHECK_BATCH) for v in await self._post(todo[i : i + CHECK_BATCH])
        ]

    def _stale(self, n: NodeIdentity, now: float) -> bool:
        got = self._cache.get(n)
        return got is None or got[0] + self._ttl < now

    def _verdict(self, n: NodeIdentity, now: float, refused: bool, failed: bool) -> Verdict:
        got = self._cache.get(n)
        if got is not None and not got[1]:
            return Verdict.REVOKED  # a "no" is kept however old, while the controller is silent
        if refused:
            return Verdict.REFUSED
        if not failed and got is not None:
            return Verdict.VALID
        if now - self.last_answer <= self.fail_open_s:
            return Verdict.VALID
        if not self._closed_logged:
            self._closed_logged = True
            log.error(
                "controller silent for longer than the fail-open window: refusing nodes",
                extra={"reason": f"no answer for {now - self.last_answer:.0f} s"},
            )
        return Verdict.UNCHECKED

    def _prune(self, now: float) -> None:
        """Forget answers the window no longer needs (past ttl + fail_open_s, a silent controller
        means UNCHECKED anyway, which refuses as a kept "no" would)."""
        if len(self._cache) > CACHE_MAX:
            keep = self._ttl + self.fail_open_s
            self._cache = {k: v for k, v in self._cache.items() if v[0] + keep >= now}
