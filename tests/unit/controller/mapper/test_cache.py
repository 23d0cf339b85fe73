"""Map cache logic: a change announced during a load is never hidden by that load; loads are shared."""

from __future__ import annotations

import asyncio
from typing import Any

from cvlan.controller.mapper.cache import CvlanMap, Mapper


class SlowMapper(Mapper):
    """A Mapper whose database load is replaced by a gate the test opens."""

    def __init__(self) -> None:
        super().__init__(ctx=None)  # type: ignore[arg-type]
        self.gates: list[asyncio.Event] = []
        self.load_count = 0

    async def _load(self, cid: int) -> CvlanMap:
        self.load_count += 1
        n = self.load_count
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return CvlanMap(
            cid,
            1,
            "c",
            "100.64.0.0/24",
            "mesh",
            db_version=n,
            token=n,
            members={},
            vrouters=[],
            via_vrouter=False,
        )


async def _open_all(m: SlowMapper, until: int) -> None:
    for _ in range(200):
        for g in m.gates:
            g.set()
        if m.load_count >= until and all(g.is_set() for g in m.gates):
            return
        await asyncio.sleep(0.001)


async def test_change_during_load_forces_a_reload() -> None:
    m = SlowMapper()
    first = asyncio.create_task(m.get(7))
    await asyncio.sleep(0.01)
    assert m.load_count == 1
    m.on_changed({7})  # committed while the first load was reading
    second = asyncio.create_task(m.get(7))  # joins the in-flight load
    await _open_all(m, 2)
    a, b = await asyncio.gather(first, second)
    assert m.load_count == 2
    assert a is b and a.db_version == 2  # both callers get the load that started after the change
    assert await m.get(7) is a  # and it is cached


async def test_concurrent_callers_share_one_load_and_survive_a_cancelled_caller() -> None:
    m = SlowMapper()
    callers = [asyncio.create_task(m.get(3)) for _ in range(10)]
    await asyncio.sleep(0.01)
    callers[0].cancel()
    await _open_all(m, 1)
    results: list[Any] = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert m.load_count == 1 and len({id(r) for r in results[1:]}) == 1


async def test_waiters_wake_on_change() -> None:
    m = SlowMapper()
    ev = m.waiter(5)
    assert not ev.is_set()
    m.on_changed({4})
    assert not ev.is_set()
    m.on_changed({5})
    assert ev.is_set() and m.waiter(5) is not ev
