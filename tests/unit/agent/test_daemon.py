"""cvlan-ctrl's poll round with stand-ins for cvland and the controller: prompt endpoint reports."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from cvlan.agent.daemon import Agent, Options
from cvlan.client.controller import ControlError
from cvlan.common.backoff import Backoff
from cvlan.wire.ipc import DesiredState, DeviceStatus
from cvlan.wire.pb import node_pb2 as pb
from tests.unit.agent.test_netmap import IDENT  # the same node identity


class FakeCvland:
    """Like cvland: no local endpoints until the first desired state has set the listen port."""

    def __init__(self) -> None:
        self.port = 0

    async def status(self) -> DeviceStatus:
        eps = [f"192.0.2.5:{self.port}"] if self.port else []
        return DeviceStatus(interface="cvlan0", engine="fake", listen_port=self.port, local_endpoints=eps)

    async def apply(self, ds: DesiredState) -> int:
        self.port = ds.listen_port
        return ds.version

    async def close(self) -> None:
        pass


class FakeController:
    def __init__(self, max_long_poll_s: int = 60) -> None:
        self.reported: list[list[str]] = []
        self.long_polls: list[int] = []
        self.adverts: list[pb.RouteAdvert | None] = []
        self.max_long_poll_s = max_long_poll_s

    async def discover(self) -> pb.DiscoverResponse:
        return pb.DiscoverResponse(max_long_poll_s=self.max_long_poll_s, poll_interval_s=30)

    async def poll(
        self,
        map_version: int,
        endpoints: list[str],
        *_: object,
        long_poll_s: int = 0,
        route_advert: pb.RouteAdvert | None = None,
    ) -> pb.PollResponse:
        self.reported.append(list(endpoints))
        self.adverts.append(route_advert)
        self.long_polls.append(long_poll_s)
        if map_version == 7:
            return pb.PollResponse(map_version=7, unchanged=True, poll_interval_s=30)
        m = pb.NetworkMap(version=7, self=pb.SelfNode(node_id=5, name="me", address="100.64.0.5/32"))
        return pb.PollResponse(map_version=7, map=m, poll_interval_s=30)


async def _noop() -> None:
    pass


async def test_endpoints_set_by_the_first_state_are_reported_at_once(tmp_path: Path) -> None:
    agent = Agent(Options(None, None, None, tmp_path, tmp_path / "sock", listen_port=51820, long_poll_s=0))
    cvland, ctl = FakeCvland(), FakeController()
    agent.ipc, agent.client, agent.ident = cvland, ctl, IDENT  # type: ignore[assignment]
    agent._renew_if_due = _noop  # type: ignore[method-assign]
    backoff = Backoff(cap=1.0)
    # First round: cvland has no endpoints yet; the map's desired state sets the port.
    assert await agent._step(backoff) == 0.0, "the new endpoints are reported without waiting"
    # Second round: they are reported; nothing moved, so the poll interval applies again.
    assert await agent._step(backoff) >= 27
    assert ctl.reported == [[], ["192.0.2.5:51820"]]


async def test_a_state_pushed_late_is_followed_by_its_endpoints(tmp_path: Path) -> None:
    # cvland was not up when the map came: the state is pushed at the start of a later round, and
    # that round's poll (a long poll that may be held) reports the endpoints the state brought.
    agent = Agent(Options(None, None, None, tmp_path, tmp_path / "sock", listen_port=51820, long_poll_s=30))
    cvland, ctl = FakeCvland(), FakeController()
    agent.ipc, agent.client, agent.ident = cvland, ctl, IDENT  # type: ignore[assignment]
    agent._renew_if_due = _noop  # type: ignore[method-assign]
    agent.held = 7
    agent.pending = DesiredState(
        version=7, node_id=5, private_key="11" * 32, address="100.64.0.5/32", cvlan_subnet="100.64.0.0/24"
    )
    assert await agent._step(Backoff(cap=1.0)) == 0.0
    assert ctl.reported == [["192.0.2.5:51820"]]


class FlakyController(FakeController):
    """Answers every other poll with the error a dead network gives."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def poll(self, map_version: int, endpoints: list[str], *a: object, **kw: object) -> pb.PollResponse:
        self.calls += 1
        if self.calls % 2 == 0:
            raise ControlError(
                "cannot reach controller https://ctl: refused", retryable=True, reason="unreachable"
            )
        return await super().poll(map_version, endpoints, *a, **kw)


async def test_metrics_count_polls_maps_and_errors_by_reason(tmp_path: Path) -> None:
    agent = Agent(Options(None, None, None, tmp_path, tmp_path / "sock", listen_port=51820, long_poll_s=30))
    ctl = FlakyController()
    agent.ipc, agent.client, agent.ident = FakeCvland(), ctl, IDENT  # type: ignore[assignment]
    agent._renew_if_due = _noop  # type: ignore[method-assign]
    for _ in range(4):  # changed, error, unchanged, error
        await agent._step(Backoff(cap=1.0))
    text = generate_latest(agent.metrics.registry).decode()
    for series in (
        'cvlan_ctrl_polls_total{result="changed"} 1.0',
        'cvlan_ctrl_polls_total{result="unchanged"} 1.0',
        'cvlan_ctrl_polls_total{result="error"} 2.0',
        'cvlan_ctrl_errors_total{reason="unreachable"} 2.0',
        "cvlan_ctrl_maps_applied_total 1.0",
        "cvlan_ctrl_applied_version 7.0",
    ):
        assert series in text, f"{series} not in\n{text}"


async def test_a_controller_that_wants_plain_polling_gets_it(tmp_path: Path) -> None:
    # The controller's max_long_poll_s is 0 (discover): the agent asks for no long-poll and waits its
    # poll interval between polls, instead of asking again at once.
    agent = Agent(Options(None, None, None, tmp_path, tmp_path / "sock", listen_port=51820, long_poll_s=30))
    cvland, ctl = FakeCvland(), FakeController(max_long_poll_s=0)
    agent.ipc, agent.client, agent.ident = cvland, ctl, IDENT  # type: ignore[assignment]
    agent._renew_if_due = _noop  # type: ignore[method-assign]
    agent.held = 7
    assert await agent._step(Backoff(cap=1.0)) >= 27
    assert ctl.long_polls == [0]
    # one that holds polls: the agent's own 30 s, at most the controller's limit
    ctl.max_long_poll_s, agent.discovered = 20, False
    assert await agent._step(Backoff(cap=1.0)) == 0.0
    assert ctl.long_polls == [0, 20]
