"""Group commit for registrations: the enrolments that arrive together are written in one transaction.

When a whole fleet re-enrols at once (a controller lost, a CA changed), most of a registration's
cost is the database round trips and the ORM's work per statement, not the certificate. Requests
that arrive while a batch is being written queue up; the next batch takes them all (up to
MAX_BATCH), and ops.registration.enrol_many writes them with one statement per step instead of one
per node. One batch is written at a time.

The guarantees of a registration hold for each node of a batch:

* its answer is sent only after the batch's transaction committed, so a node that got a success
  exists (with its address, certificate serial, token use and audit record) exactly once;
* a node refused by a check (token, key, name, address) gets its own error and nothing is written
  for it; the others of the batch go on;
* if the batch's transaction itself fails (a constraint another process raced for, an unexpected
  error), nothing of it was written, and every node of it is registered alone, as without batching,
  so one node's failure never takes the others down. A lost database fails them all (503, retry);
* a node that is already registered (a retry after a lost answer) is registered alone after the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from cvlan.controller.audit import request_id_var
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import registration
from cvlan.controller.ops.context import OpsContext
from cvlan.controller.ops.registration import Enrolment, Issued

MAX_BATCH = 64
"""Enrolments per transaction: enough to amortise its fixed costs, small enough to keep a batch's
locks and its answers' latency short."""


class EnrolmentBatcher:
    def __init__(
        self,
        ctx: OpsContext,
        ca: CertificateAuthority,
        lock: contextlib.AbstractAsyncContextManager[Any],
        alone: Callable[[Enrolment], Awaitable[Issued]],
    ) -> None:
        self.ctx = ctx
        self.ca = ca
        self.lock = lock
        self.alone = alone
        """Registers one node in its own transaction (the path without batching)."""
        self._queue: list[tuple[Enrolment, asyncio.Future[Issued]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        """Transactions written (for tests and metrics)."""

    async def submit(self, e: Enrolment) -> Issued:
        """Register the node with the next batch; its answer once that batch committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Issued] = loop.create_future()
        self._queue.append((e, fut))
        if self._task is None:
            self._task = loop.create_task(self._drain(), name="enrolment-batches")
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                # A caller that went away before its batch started (client gone) is not registered.
                batch = [(e, f) for e, f in batch if not f.done()]
                if batch:
                    await self._write(batch)
        finally:
            self._task = None

    async def _write(self, batch: list[tuple[Enrolment, asyncio.Future[Issued]]]) -> None:
        results: list[Issued | DomainError | None]
        try:
            async with self.lock, self.ctx.tx() as s:
                results = await registration.enrol_many(self.ctx, s, self.ca, [e for e, _ in batch])
            self.batches += 1
        except Exception as err:  # noqa: BLE001 - nothing of the batch was written: see below
            if len(batch) == 1 or (isinstance(err, DomainError) and err.kind == Kind.UNAVAILABLE):
                for _, fut in batch:
                    _settle(fut, err)
                return
            results = [None] * len(batch)  # each alone: only the node at fault fails
        for (e, fut), r in zip(batch, results, strict=True):
            _settle(fut, await self._alone(e) if r is None else r)

    async def _alone(self, e: Enrolment) -> Issued | BaseException:
        token = request_id_var.set(e.request_id)
        try:
            return await self.alone(e)
        except Exception as err:  # noqa: BLE001 - it is this node's answer
            return err
        finally:
            request_id_var.reset(token)


def _settle(fut: asyncio.Future[Issued], r: Issued | BaseException) -> None:
    if fut.done():
        return
    if isinstance(r, BaseException):
        fut.set_exception(r)
    else:
        fut.set_result(r)
