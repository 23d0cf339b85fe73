"""An ephemeral node (a CI runner) on a real mesh (wireguard-go, two namespaces, long-poll): once its
host has been gone for longer than ephemeral_offline_s, the controller removes it -- it disappears
from the member list, its peer drops its tunnel at once, and the removal is audited. Every wait is
bounded and measured from what the controller shows (the node's last_seen), not a fixed sleep.
About 100 s: the offline time cannot be set under 60 s."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cvlan.devtools.harness.enrol import make_token_sync
from tests.harness.netns import Lab
from tests.harness.stack import Controller, start_node, wait_until

pytestmark = pytest.mark.e2e

OFFLINE_S = 60
SWEEP_EVERY_S = OFFLINE_S / 4
"""How often the controller looks for ephemeral nodes gone offline (a quarter of OFFLINE_S)."""
SLACK_S = 45.0
"""For a loaded machine: a poll that was under way, a slow sweep, a slow listing."""


def test_ephemeral_node_disappears_from_the_member_list_after_its_offline_time(lab: Lab) -> None:
    env = {"CVLAN_CONTROLLER_POLL_INTERVAL_S": "5", "CVLAN_CONTROLLER_EPHEMERAL_OFFLINE_S": str(OFFLINE_S)}
    ctl = Controller(lab, lab.public_host("ctl"), lab.dir / "controller", env).start()
    assert ctl.api is not None
    _, join = ctl.token("acme", "office")
    ephemeral = make_token_sync(ctl.api.request, "acme", "office", reusable=True, ephemeral=True)
    server = start_node(lab, lab.public_host("n0"), "server", join)
    runner = start_node(lab, lab.public_host("n1"), "runner", str(ephemeral["join_command"]))
    for node in (server, runner):
        node.wait_ready(peers=1)
    addr = runner.address()
    assert server.ns.wait_ping(addr, timeout=30), "no tunnel to start with"
    assert {n["name"]: n["ephemeral"] for n in ctl.nodes("acme")} == {"server": False, "runner": True}

    # The controller writes last_seen in batches (liveness_flush_s): the runner has been seen once
    # the member list says so.
    wait_until("the runner's last_seen is written", lambda: _node(ctl, "runner")["last_seen"], 30, interval=1)

    # The runner's host goes away (both daemons).
    runner.stop_ctrl()
    runner.dp.proc.stop()
    last_seen = dt.datetime.fromisoformat(_node(ctl, "runner")["last_seen"])
    gone_by = last_seen + dt.timedelta(seconds=OFFLINE_S + SWEEP_EVERY_S + SLACK_S)
    left = (gone_by - dt.datetime.now(dt.UTC)).total_seconds()
    wait_until("the runner is removed", lambda: _node(ctl, "runner") is None, max(left, 1.0), interval=1)
    assert dt.datetime.now(dt.UTC) >= last_seen + dt.timedelta(seconds=OFFLINE_S), "removed too early"
    assert [n["name"] for n in ctl.nodes("acme")] == ["server"]

    # Its peer drops it at once (long-poll) and the tunnel is gone; the removal is audited.
    server.wait_ready(peers=0, timeout=10)
    assert not server.ns.ping(addr, count=2), "traffic still goes to the removed node"
    (entry,) = ctl.api.get("/api/v1/tenants/acme/audit?action=node.ephemeral_remove")["items"]
    assert entry["before"]["name"] == "runner" and entry["actor"] == "controller:ephemeral-sweeper"
    assert entry["before"]["address"] == addr


def _node(ctl: Controller, name: str) -> Any:
    """The node named name as the member list shows it, or None once it is gone."""
    return {n["name"]: n for n in ctl.nodes("acme")}.get(name)
