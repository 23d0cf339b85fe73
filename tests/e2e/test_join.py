"""`cvlan-ctrl join` on a fresh node in a namespace, with the real daemons started the way the packaged
units start them (cvland, then cvlan-ctrl from the state dir with no token): the node comes online,
join prints its overlay address, and it pings a peer. About 20 s."""

from __future__ import annotations

import pytest

from cvlan.devtools.harness.controller import script
from cvlan.devtools.harness.enrol import join_args
from tests.harness.cvland import start_cvland
from tests.harness.netns import Lab
from tests.harness.stack import Node, start_controller, start_node, wait_until

pytestmark = pytest.mark.e2e


def test_a_fresh_node_joins_with_one_command_and_reaches_its_peer(lab: Lab) -> None:
    ctl = start_controller(lab)
    token, join = ctl.token("acme", "office")
    server, _, pin = join_args(join)
    peer = start_node(lab, lab.public_host("n1"), "n1", join)
    ns = lab.public_host("n0")
    dp = start_cvland(lab, ns)  # --service-manager none: cvland supervised by someone else
    state = lab.dir / "n0-ctrl"
    token_file = lab.dir / "n0.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    joining = ns.spawn(
        "join",
        script("cvlan-ctrl"),
        "join",
        "--server",
        server,
        "--ca-pin",
        pin,
        "--token-file",
        str(token_file),
        "--state-dir",
        str(state),
        "--cvland-socket",
        str(dp.socket),
        "--service-manager",
        "none",
        "--hostname",
        "n0",
        "--timeout",
        "60",
    )
    wait_until("join wrote the identity", lambda: (state / "state.db").exists() or not joining.alive(), 30)
    node = Node(ns, "n0", state, dp)
    node.start_ctrl()  # the unit's command line: state dir and socket, no token
    wait_until("join returned", lambda: not joining.alive(), 60)
    assert joining.stop() == 0, joining.output()
    node.wait_ready(peers=1)
    address = node.address()
    assert joining.output().strip().splitlines()[-1] == (
        f"joined: node n0 is online in CVLAN office, overlay address {address}"
    )
    assert token not in joining.output()
    assert ns.wait_ping(peer.address(), timeout=30), "the joined node cannot reach its peer"
