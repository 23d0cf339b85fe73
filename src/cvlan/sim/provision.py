"""Bulk provisioning over the management API: regions, vrouter placeholders, tenants, CVLANs, tokens.

Idempotent and resumable: what exists (by name) is kept, and enrollment tokens, whose text the API
shows only once, are kept in a 0600 file in the work directory. Running it again after an
interruption creates only what is missing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cvlan.common.adminconf import AdminConf
from cvlan.common.backoff import Backoff
from cvlan.common.files import write_atomic
from cvlan.sim.churn import POLICIES
from cvlan.sim.progress import Progress

TOKENS_FILE = "tokens.json"
RETRYABLE = {429, 500, 502, 503, 504}


class ProvisionError(Exception):
    """A request the management API refused for good (bad token, invalid plan...)."""


@dataclass(frozen=True)
class Plan:
    """What to create. Names are derived from the prefix, so a second run finds the first run's objects."""

    tenants: int
    cvlans_per_tenant: int
    nodes_per_cvlan: int
    prefix: str = "sim"
    regions: int = 1
    vrouter_cvlans: int = 0
    """CVLANs per tenant (the first ones) attached to a vrouter, the regions' vrouters in turn."""
    policies: bool = False
    """Give every CVLAN the simulated policy (churn.POLICIES[0])."""
    spare_uses: int = 0
    """Uses of each CVLAN's token beyond nodes_per_cvlan, for nodes that join during the run."""

    def __post_init__(self) -> None:
        if self.tenants < 1 or self.cvlans_per_tenant < 1 or self.nodes_per_cvlan < 1 or self.regions < 1:
            raise ValueError("tenants, CVLANs per tenant, nodes per CVLAN and regions must be at least 1")
        if self.tenants > 9999 or self.cvlans_per_tenant > 9999:
            raise ValueError("at most 9999 tenants and 9999 CVLANs per tenant")
        if not self.prefix.replace("-", "").isalnum() or len(self.prefix) > 20:
            raise ValueError("prefix: letters, digits and '-' only, at most 20 characters")

    @property
    def nodes(self) -> int:
        return self.tenants * self.cvlans_per_tenant * self.nodes_per_cvlan

    def tenant_names(self) -> list[str]:
        return [f"{self.prefix}-t{i:04d}" for i in range(1, self.tenants + 1)]

    def cvlan_names(self) -> list[str]:
        return [f"c{j:04d}" for j in range(1, self.cvlans_per_tenant + 1)]

    def region_names(self) -> list[str]:
        return [f"{self.prefix}-r{k}" for k in range(1, self.regions + 1)]


@dataclass
class TokenEntry:
    tenant: str
    cvlan: str
    token: str
    nodes: int


@dataclass
class TokenStore:
    """The enrollment tokens the simulated nodes will use, and the vrouters' bootstrap tokens, kept
    in WORK_DIR/tokens.json (mode 0600)."""

    path: Path
    server: str = ""
    entries: dict[str, TokenEntry] = field(default_factory=dict)
    vrouters: dict[str, str] = field(default_factory=dict)
    """vrouter name -> bootstrap token (shown once, when the vrouter is created)."""

    @staticmethod
    def key(tenant: str, cvlan: str) -> str:
        return f"{tenant}/{cvlan}"

    @classmethod
    def load(cls, path: Path, server: str) -> TokenStore:
        store = cls(path=path, server=server)
        if not path.exists():
            return store
        data = json.loads(path.read_text())
        if data.get("server") != server:
            # Tokens of another controller are useless here; start over rather than mix them.
            return store
        for k, v in data.get("tokens", {}).items():
            store.entries[k] = TokenEntry(**v)
        store.vrouters = dict(data.get("vrouters", {}))
        return store

    def save(self) -> None:
        data = {
            "version": 1,
            "server": self.server,
            "tokens": {k: asdict(v) for k, v in sorted(self.entries.items())},
            "vrouters": dict(sorted(self.vrouters.items())),
        }
        write_atomic(self.path, json.dumps(data, indent=0), 0o600)

    def for_plan(self, plan: Plan) -> list[TokenEntry]:
        """The plan's tokens in a stable order (tenant, then CVLAN); missing ones are skipped."""
        out = []
        for t in plan.tenant_names():
            for c in plan.cvlan_names():
                e = self.entries.get(self.key(t, c))
                if e is not None:
                    out.append(e)
        return out


@dataclass
class Summary:
    created: Counter[str] = field(default_factory=Counter)
    existing: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        kinds = ["region", "vrouter", "tenant", "cvlan", "policy", "attach", "token"]
        out = [f"{'object':<10}{'created':>10}{'existing':>10}"]
        for k in kinds:
            out.append(f"{k:<10}{self.created[k]:>10}{self.existing[k]:>10}")
        rate = self.requests / self.seconds if self.seconds else 0.0
        out.append(f"{self.requests} API requests in {self.seconds:.1f} s ({rate:.0f}/s)")
        if self.errors:
            out.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())))
        return out


class Api:
    """A small JSON client of the management API with retries for transient failures."""

    def __init__(self, conf: AdminConf, concurrency: int, summary: Summary) -> None:
        self.conf = conf
        self.summary = summary
        connector = aiohttp.TCPConnector(ssl=conf.ssl_context(), limit=concurrency)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"Authorization": f"Bearer {conf.token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        backoff = Backoff(base=0.2, cap=5.0)
        for attempt in range(6):
            self.summary.requests += 1
            try:
                async with self.session.request(method, self.conf.server + path, json=body) as r:
                    text = await r.text()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as e:
                if attempt == 5:
                    raise ProvisionError(f"{method} {path}: {type(e).__name__}: {e}") from e
                self.summary.errors["transport_retry"] += 1
                await asyncio.sleep(backoff.next())
                continue
            if status in RETRYABLE and attempt < 5:
                self.summary.errors[f"http_{status}_retry"] += 1
                await asyncio.sleep(backoff.next())
                continue
            try:
                data = json.loads(text) if text else None
            except ValueError:
                data = text
            if status == 401:
                raise ProvisionError("the management API refused the token in admin.conf (401)")
            return status, data
        raise AssertionError("unreachable")

    async def list_all(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            sep = "&" if "?" in path else "?"
            status, data = await self.call("GET", f"{path}{sep}limit=1000&offset={offset}")
            if status != 200:
                raise ProvisionError(f"GET {path}: HTTP {status}: {_msg(data)}")
            items.extend(data["items"])
            offset += len(data["items"])
            if not data["items"] or offset >= data["total"]:
                return items

    async def create(self, kind: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST; returns the created object, or None if it already existed (409)."""
        status, data = await self.call("POST", path, body)
        if status == 201:
            self.summary.created[kind] += 1
            return dict(data)
        if status == 409:
            self.summary.existing[kind] += 1
            return None
        self.summary.errors[f"{kind}_http_{status}"] += 1
        raise ProvisionError(f"create {kind} {body.get('name', '')}: HTTP {status}: {_msg(data)}")


def _msg(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(data.get("message", data))[:200]
    return str(data)[:200]


async def _pool(jobs: Iterable[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    """Run jobs with at most `concurrency` in flight; the first failure cancels the rest."""
    it = iter(jobs)

    async def worker() -> None:
        for job in it:
            await job()

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()


async def provision(
    conf: AdminConf,
    plan: Plan,
    work_dir: Path,
    concurrency: int = 16,
    token_ttl: str = "7d",
    quiet: bool = False,
) -> tuple[Summary, TokenStore]:
    """Create what the plan needs and is missing; return the summary and the token store."""
    summary = Summary()
    t0 = time.monotonic()
    store = TokenStore.load(work_dir / TOKENS_FILE, conf.server)
    api = Api(conf, concurrency, summary)
    try:
        status, who = await api.call("GET", "/api/v1/whoami")
        if status != 200 or not who.get("platform_admin"):
            raise ProvisionError("provisioning needs a platform-admin token (the one in admin.conf)")
        await _infra(api, plan, store)
        await _tenants(api, plan, concurrency, quiet)
        await _cvlans(api, plan, concurrency, quiet)
        await _cvlan_extras(api, plan, concurrency, quiet)
        await _tokens(api, plan, store, concurrency, token_ttl, quiet)
    finally:
        store.save()
        await api.close()
        summary.seconds = time.monotonic() - t0
    return summary, store


def vrouter_name(plan: Plan, k: int) -> str:
    return f"{plan.prefix}-vr{k}"


async def _infra(api: Api, plan: Plan, store: TokenStore) -> None:
    regions = {r["name"] for r in await api.list_all("/api/v1/regions")}
    vrouters = {v["name"] for v in await api.list_all("/api/v1/vrouters")}
    for k, name in enumerate(plan.region_names(), start=1):
        if name in regions:
            api.summary.existing["region"] += 1
        else:
            await api.create("region", "/api/v1/regions", {"name": name})
        vname = vrouter_name(plan, k)
        if vname in vrouters:
            api.summary.existing["vrouter"] += 1
            continue
        # The simulation's vrouters register and poll their desired state (simvrouter.py) but carry
        # no traffic; 192.0.2.0/24 is documentation space.
        body = {"name": vname, "region": name, "endpoint": f"192.0.2.{k % 250 + 1}:51820"}
        made = await api.create("vrouter", "/api/v1/vrouters", body)
        if made is not None:
            store.vrouters[vname] = str(made["token"])


async def _tenants(api: Api, plan: Plan, concurrency: int, quiet: bool) -> None:
    have = {t["name"] for t in await api.list_all("/api/v1/tenants")}
    names = plan.tenant_names()
    missing = [n for n in names if n not in have]
    api.summary.existing["tenant"] += len(names) - len(missing)
    bar = None if quiet else Progress("tenants", len(missing))

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await api.create("tenant", "/api/v1/tenants", {"name": name, "display_name": "simulated"})
            if bar:
                bar.add()

        return run

    await _pool((job(n) for n in missing), concurrency)
    if bar:
        bar.close()


async def _cvlans(api: Api, plan: Plan, concurrency: int, quiet: bool) -> None:
    wanted = plan.cvlan_names()
    missing: list[tuple[str, str]] = []

    def lister(tenant: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            have = {c["name"] for c in await api.list_all(f"/api/v1/tenants/{tenant}/cvlans")}
            api.summary.existing["cvlan"] += sum(1 for c in wanted if c in have)
            missing.extend((tenant, c) for c in wanted if c not in have)

        return run

    await _pool((lister(t) for t in plan.tenant_names()), concurrency)
    missing.sort()
    bar = None if quiet else Progress("cvlans", len(missing))

    def job(tenant: str, cvlan: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await api.create("cvlan", f"/api/v1/tenants/{tenant}/cvlans", {"name": cvlan, "mode": "mesh"})
            if bar:
                bar.add()

        return run

    await _pool((job(t, c) for t, c in missing), concurrency)
    if bar:
        bar.close()


async def _cvlan_extras(api: Api, plan: Plan, concurrency: int, quiet: bool) -> None:
    """The policy of every CVLAN and the vrouters of the first vrouter_cvlans of each tenant (both
    idempotent: the same policy again changes nothing, an attached vrouter is attached)."""
    todo = [(i, t, j, c) for i, t in enumerate(plan.tenant_names()) for j, c in enumerate(plan.cvlan_names())]
    todo = [x for x in todo if plan.policies or x[2] < plan.vrouter_cvlans]
    if not todo:
        return
    bar = None if quiet else Progress("policies, vrouters", len(todo))

    def job(i: int, tenant: str, j: int, cvlan: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            base = f"/api/v1/tenants/{tenant}/cvlans/{cvlan}"
            if plan.policies:
                await _put(api, "policy", base + "/policy", POLICIES[0])
            if j < plan.vrouter_cvlans:
                # the regions' vrouters in turn, over tenants and CVLANs
                vr = vrouter_name(plan, (i + j) % plan.regions + 1)
                await _put(api, "attach", base + "/vrouters", {"vrouter": vr}, "POST")
            if bar:
                bar.add()

        return run

    await _pool((job(*x) for x in todo), concurrency)
    if bar:
        bar.close()


async def _put(api: Api, kind: str, path: str, body: dict[str, Any], method: str = "PUT") -> None:
    status, data = await api.call(method, path, body)
    if status not in (200, 201):
        api.summary.errors[f"{kind}_http_{status}"] += 1
        raise ProvisionError(f"{kind} {path}: HTTP {status}: {_msg(data)}")
    changed = data.get("changed", True) if isinstance(data, dict) else True
    (api.summary.created if changed else api.summary.existing)[kind] += 1


async def _tokens(api: Api, plan: Plan, store: TokenStore, concurrency: int, ttl: str, quiet: bool) -> None:
    todo = []
    for t in plan.tenant_names():
        for c in plan.cvlan_names():
            e = store.entries.get(store.key(t, c))
            if e is not None and e.nodes >= plan.nodes_per_cvlan + plan.spare_uses:
                api.summary.existing["token"] += 1
            else:
                todo.append((t, c))
    bar = None if quiet else Progress("tokens", len(todo))
    last_save = time.monotonic()

    def job(tenant: str, cvlan: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            nonlocal last_save
            uses = plan.nodes_per_cvlan + plan.spare_uses
            body = {"cvlan": cvlan, "uses": uses, "expires": ttl, "tags": ["sim"]}
            if uses == 1:
                body["reusable"] = False
            made = await api.create("token", f"/api/v1/tenants/{tenant}/tokens", body)
            if made is None:
                raise ProvisionError(f"create token for {tenant}/{cvlan}: unexpected conflict")
            store.entries[store.key(tenant, cvlan)] = TokenEntry(tenant, cvlan, str(made["token"]), uses)
            if time.monotonic() - last_save > 2.0:
                last_save = time.monotonic()
                store.save()
            if bar:
                bar.add()

        return run

    await _pool((job(t, c) for t, c in todo), concurrency)
    if bar:
        bar.close()
