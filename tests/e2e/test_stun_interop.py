"""STUN interoperability and endpoint discovery behind real NATs (network namespaces, nftables).

* Debian's `stun` client (RFC 3489) gets the right mapping from our responder.
* Our client gets the right mapping from Debian's `stund`, which needs two addresses.
* The raw-socket prober learns the NAT mapping of a port another socket owns, and the mapping is
  real: a datagram sent to it reaches that socket.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time

import pytest

from tests.harness.netns import Lab, Netns, Proc

pytestmark = pytest.mark.e2e

PY = sys.executable
RESPONDER = """
import asyncio
from cvlan.relay.metrics import RelayMetrics
from cvlan.relay.stunserver import start_stun
async def main():
    await start_stun("0.0.0.0", 3478, RelayMetrics())
    print("listening", flush=True)
    await asyncio.sleep(120)
asyncio.run(main())
"""


def _wait_for(proc: Proc, pattern: str, timeout: float = 15.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, proc.output())
        if m:
            return m
        if not proc.alive():
            break
        time.sleep(0.05)
    raise AssertionError(f"{proc.name}: no {pattern!r} in output:\n{proc.output()[-2000:]}")


def _responder(srv: Netns) -> Proc:
    p = srv.spawn("responder", PY, "-c", RESPONDER)
    _wait_for(p, "listening")
    return p


def _wan_ip(router: Netns) -> str:
    return router.ip


def test_debian_stun_client_gets_mapping_from_our_responder(lab: Lab) -> None:
    if shutil.which("stun") is None:
        pytest.skip("this machine lacks a capability: Debian package stun-client (`stun`)")
    h1, nat1 = lab.nat_host("h1", "masquerade")
    srv = lab.public_host("srv")
    _responder(srv)
    # Test 1 of RFC 3489 from source port 40001: a Binding request without change flags.
    r = h1.run("stun", srv.ip, "1", "-v", "-p", "40001", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"MappedAddress = {_wan_ip(nat1)}:40001" in out, out
    assert "ok=1" in out


def test_our_client_gets_mapping_from_debian_stund(lab: Lab) -> None:
    if shutil.which("stund") is None:
        pytest.skip("this machine lacks a capability: Debian package stun-server (`stund`)")
    h1, nat1 = lab.nat_host("h1", "masquerade")
    srv = lab.public_host("srv")
    second = srv.ip.rsplit(".", 1)[0] + "." + str(int(srv.ip.rsplit(".", 1)[1]) + 200)
    srv.exec("ip", "addr", "add", f"{second}/32", "dev", "eth0")
    lab.internet().exec("ip", "route", "add", f"{second}/32", "via", srv.ip)
    stund = srv.spawn("stund", "stund", "-v", "-h", srv.ip, "-a", second)
    deadline = time.monotonic() + 10
    while f"{second}:3479" not in srv.exec("ss", "-uln") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stund.alive(), stund.output()
    code = (
        "import asyncio, json\n"
        "from cvlan.client.stun import probe\n"
        f"r = asyncio.run(probe(('{srv.ip}', 3478), bind=('0.0.0.0', 40002)))\n"
        "print(json.dumps(list(r.mapped)))\n"
    )
    out = h1.exec(PY, "-c", code, timeout=30)
    assert json.loads(out) == [_wan_ip(nat1), 40002]


def test_raw_prober_learns_the_real_mapping_of_an_owned_port(lab: Lab) -> None:
    # A NAT that maps to other ports, so the answer cannot be the local port echoed back.
    h1, nat1 = lab.nat_host("h1", "meta l4proto udp masquerade to :40000-40099")
    srv = lab.public_host("srv")
    resp = _responder(srv)
    code = (
        "import asyncio, json, socket\n"
        "from cvlan.client.stun import RawStunProber, probe\n"
        "owner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "owner.bind(('0.0.0.0', 51820))\n"
        "async def main():\n"
        "    p = RawStunProber(51820)\n"
        f"    raw = await p.probe(('{srv.ip}', 3478))\n"
        f"    other = await probe(('{srv.ip}', 3478), bind=('0.0.0.0', 51821))\n"
        "    print(json.dumps({'raw': raw.mapped, 'other': other.mapped, 'seen': p.seen}), flush=True)\n"
        "    p.close()\n"
        "asyncio.run(main())\n"
        "owner.settimeout(20)\n"
        "for _ in range(50):\n"
        "    data, addr = owner.recvfrom(2048)\n"
        "    if data == b'hello-owner':\n"
        "        print('owner got', addr[0], flush=True)\n"
        "        break\n"
    )
    h1p = h1.spawn("prober", PY, "-c", code)
    m = _wait_for(h1p, r"(\{.*\})")
    got = json.loads(m.group(1))
    raw_ip, raw_port = got["raw"]
    assert raw_ip == _wan_ip(nat1) and 40000 <= raw_port <= 40099
    assert got["other"][1] != raw_port  # another local port maps elsewhere: why the raw probe exists
    assert got["seen"] == 1
    # The mapping is the owned socket's: a datagram from the STUN server's address and port to it
    # passes the NAT (and its firewall, as an established flow) and arrives at port 51820.
    resp.stop()
    send = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 3478))\n"
        f"s.sendto(b'hello-owner', ('{raw_ip}', {raw_port}))\n"
    )
    deadline = time.monotonic() + 10
    while "owner got" not in h1p.output() and time.monotonic() < deadline:
        srv.exec(PY, "-c", send)
        time.sleep(0.3)
    assert f"owner got {srv.ip}" in h1p.output(), h1p.output()
