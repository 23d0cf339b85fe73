"""CPU and memory of every component of a load run, sampled with psutil.

CPU % is per core (100 % = one full core), summed over a component's processes; the busiest one
is given too, to tell one process's burst from all of them busier. Memory is RSS,
except for PostgreSQL, whose backends all map the same shared buffers: there it is the sum of each
process's private part (RSS - shared) plus the largest shared part once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


@dataclass
class Component:
    name: str
    roots: Callable[[], list[int]]
    """The component's root pids (their descendants are counted too)."""
    shared_memory: bool = False
    recursive: bool = True
    procs: dict[int, psutil.Process] = field(default_factory=dict)
    waits: dict[int, int] = field(default_factory=dict)
    """Last run-queue wait (ns) per pid, from /proc/PID/schedstat."""


class Sampler:
    def __init__(self) -> None:
        self.components: list[Component] = []
        psutil.cpu_percent(interval=None)
        psutil.cpu_times_percent(interval=None)

    def add(
        self, name: str, roots: Callable[[], list[int]], shared_memory: bool = False, recursive: bool = True
    ) -> None:
        self.components.append(Component(name, roots, shared_memory, recursive))

    def _refresh(self, c: Component) -> None:
        alive: dict[int, psutil.Process] = {}
        for pid in c.roots():
            try:
                root = c.procs.get(pid) or psutil.Process(pid)
                alive[pid] = root
                if c.recursive:
                    for ch in root.children(recursive=True):
                        alive[ch.pid] = c.procs.get(ch.pid) or ch
            except psutil.Error:
                continue
        for pid, p in alive.items():
            if pid not in c.procs:
                try:
                    p.cpu_percent(interval=None)  # first call primes the counter
                except psutil.Error:
                    pass
        c.procs = alive

    @staticmethod
    def _schedstat_wait_ns(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                return int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def _runq_wait_ms(self, c: Component) -> float:
        """Time the component's main threads spent runnable but waiting for a CPU since the last
        sample: the direct measure of how much other work on the machine delayed it."""
        total = 0
        waits: dict[int, int] = {}
        for pid in c.procs:
            w = self._schedstat_wait_ns(pid)
            if w is None:
                continue
            waits[pid] = w
            if pid in c.waits:
                total += max(0, w - c.waits[pid])
        c.waits = waits
        return round(total / 1e6, 1)

    def sample(self) -> dict[str, dict[str, float]]:
        """{component: {"cpu": % of one core, "rss_mb": MB, "procs": n}} plus "machine"."""
        out: dict[str, dict[str, float]] = {}
        for c in self.components:
            self._refresh(c)
            wait_ms = self._runq_wait_ms(c)
            cpu = 0.0
            busiest = 0.0
            private = 0
            shared_max = 0
            for p in list(c.procs.values()):
                try:
                    one = p.cpu_percent(interval=None)
                    mi = p.memory_info()
                    cpu += one
                    busiest = max(busiest, one)
                except psutil.Error:
                    continue
                if c.shared_memory:
                    private += mi.rss - mi.shared
                    shared_max = max(shared_max, mi.shared)
                else:
                    private += mi.rss
            out[c.name] = {
                "cpu": round(cpu, 1),
                "cpu_busiest_proc": round(busiest, 1),
                "rss_mb": round((private + shared_max) / 2**20, 1),
                "procs": len(c.procs),
                "runq_wait_ms": wait_ms,
            }
        vm = psutil.virtual_memory()
        cores = psutil.cpu_count() or 1
        times = psutil.cpu_times_percent(interval=None)
        out["machine"] = {
            "cpu": round(psutil.cpu_percent(interval=None) * cores, 1),
            # CPU no component is charged for: packet processing deferred to softirq context, and
            # time the hypervisor gave this machine's cores to someone else.
            "softirq": round(getattr(times, "softirq", 0.0) * cores, 1),
            "steal": round(getattr(times, "steal", 0.0) * cores, 1),
            "rss_mb": round((vm.total - vm.available) / 2**20, 1),
            "procs": 0,
        }
        return out
