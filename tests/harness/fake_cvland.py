"""A stand-in for cvland's IPC side (the real one needs root and WireGuard): it speaks the contract in
cvlan.wire.ipc, records every applied DesiredState and reports fixed endpoints."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cvlan.wire.ipc import IPC_VERSION, MAX_LINE, DesiredState, DeviceStatus


class FakeCvland:
    def __init__(self, path: Path, local_endpoints: list[str], mapped: str = "") -> None:
        self.path = path
        self.status = DeviceStatus(
            interface="cvlan0", engine="fake", local_endpoints=local_endpoints, mapped_endpoint=mapped
        )
        self.applied: list[DesiredState] = []
        self.changed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> FakeCvland:
        self._server = await asyncio.start_unix_server(self._conn, str(self.path), limit=MAX_LINE)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while line := await r.readline():
                w.write(json.dumps(self._answer(json.loads(line))).encode() + b"\n")
                await w.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            w.close()

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        head = {"v": IPC_VERSION, "id": req.get("id")}
        if req.get("op") == "apply":
            st = DesiredState.model_validate(req["state"])
            self.applied.append(st)
            self.status = self.status.model_copy(
                update={"applied_version": st.version, "node_id": st.node_id, "address": st.address}
            )
            self.changed.set()
            return {**head, "ok": True, "applied_version": st.version}
        if req.get("op") == "status":
            return {**head, "ok": True, **self.status.model_dump()}
        return {**head, "ok": True}
