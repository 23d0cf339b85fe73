"""The Debian packages on a clean Debian root with systemd booted: install, owners and modes, users,
unit verification, a controller and a node started by their units, refusal without WireGuard,
upgrade keeping the node's identity, and purge leaving nothing behind (docs/PACKAGING.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import cvlan
from tests.harness import debroot
from tests.harness.netns import Lab

# The module's setup builds both packages and a Debian root (about a minute on an idle machine; 250 s
# was seen on a loaded one): pytest-timeout counts the setup with the test, so the suite's 300 s is
# too short here. Each step has its own bound (the build 1,200 s, each wait in the root 60 s).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

TOP = Path(__file__).parents[2]
CLIENT_CMDS = ("cvlan-ctrl", "cvland", "cvlancli")
SERVER_CMDS = ("cvlan-controller", "cvlan", "cvlan-front", "cvlan-relay", "cvlan-vrouter")
UNITS = ("cvland", "cvlan-ctrl", "cvlan-controller", "cvlan-front", "cvlan-relay", "cvlan-vrouter")
USERS = ("cvlan-ctrl", "cvlan-controller", "cvlan-front", "cvlan-relay")
SERVER_ONLY_LIBS = ("sqlalchemy", "asyncpg", "alembic", "aiosqlite", "argon2", "jinja2", "uvloop", "OpenSSL")
NEVER_SHIPPED = ("matplotlib", "numpy", "playwright", "pytest", "hypothesis", "mypy", "ruff", "psutil")
UPGRADE_VERSION = f"{cvlan.__version__}+pkgtest1"


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root"
    for b in ("dpkg-buildpackage", "dh_virtualenv", "mmdebstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(b) is None:
            return f"needs {b} (make sysdeps installs it)"
    return ""


def repack_with_version(deb: Path, version: str, out: Path) -> Path:
    """The same package with a higher version: what an upgrade from the previous release sees."""
    tree = out / f"tree-{deb.stem}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    new = out / deb.name.replace(f"_{cvlan.__version__}_", f"_{version}_")
    subprocess.run(["dpkg-deb", "-Zgzip", "-b", str(tree), str(new)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return new


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    why = _missing()
    if why:
        pytest.skip(f"this machine lacks a capability: {why}")
    out = tmp_path_factory.mktemp("debs")
    v1 = out / "v1"
    prebuilt = os.environ.get("CVLAN_PKGTEST_DEBS")  # packages `make deb` made from this tree
    if prebuilt:
        shutil.copytree(prebuilt, v1)
    else:
        argv = [str(TOP / "packaging" / "build-deb"), str(v1)]
        built = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        assert built.returncode == 0, built.stderr
    v2 = out / "v2"
    v2.mkdir()
    for deb in list(v1.glob("*.deb")):
        repack_with_version(deb, UPGRADE_VERSION, v2)
    return {"v1": v1, "v2": v2}


@pytest.fixture(scope="module")
def base_root(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One clean root unpacked for the module; every container boots a copy-on-write overlay of it."""
    base = debroot.unpack(tmp_path_factory.mktemp("base") / "root")
    try:
        yield base
    finally:
        debroot.remove_root(base)


@pytest.fixture
def box(debs: dict[str, Path], base_root: Path, tmp_path: Path) -> Iterator[debroot.Booted]:
    root = debroot.overlay(base_root, tmp_path / "box")
    try:
        b = debroot.Booted(
            root, f"cvlanpkg{os.getpid() % 100000}", {debs["v1"]: "/debs/v1", debs["v2"]: "/debs/v2"}
        )
        try:
            yield b.wait_booted()
        finally:
            b.close()
    finally:
        debroot.remove_overlay(root)


def wait_for(box: debroot.Booted, script: str, what: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        r = box.sh(script, check=False)
        if r.returncode == 0:
            return r.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s: {r.stdout}{r.stderr}")
        time.sleep(0.25)


def check_install(box: debroot.Booted) -> None:
    for u in USERS:
        assert box.run("getent", "passwd", u).stdout.split(":")[6].strip() == "/usr/sbin/nologin"
    assert "cvlan-ctrl" in box.run("getent", "group", "cvlan").stdout.strip().split(":")[3].split(",")
    modes = box.sh(
        "stat -c '%n %a %U %G' /var/lib/cvlan-ctrl /var/lib/cvland /var/lib/cvlan-controller "
        "/var/lib/cvlan-relay /var/lib/cvlan-vrouter /etc/cvlan/relay.env /etc/cvlan/cvland.env"
    ).stdout.splitlines()
    assert modes == [
        "/var/lib/cvlan-ctrl 700 cvlan-ctrl cvlan-ctrl",
        "/var/lib/cvland 700 root root",
        "/var/lib/cvlan-controller 700 cvlan-controller cvlan-controller",
        "/var/lib/cvlan-relay 700 cvlan-relay cvlan-relay",
        "/var/lib/cvlan-vrouter 700 root root",
        "/etc/cvlan/relay.env 640 root cvlan-relay",
        "/etc/cvlan/cvland.env 644 root root",
    ]
    for cmd in CLIENT_CMDS + SERVER_CMDS:
        assert box.run(cmd, "--version").stdout == f"{cmd} {cvlan.__version__}\n"
    client_libs = box.sh("ls /opt/cvlan/client/lib/python3*/site-packages").stdout.split()
    server_libs = box.sh("ls /opt/cvlan/server/lib/python3*/site-packages").stdout.split()
    assert not [m for m in SERVER_ONLY_LIBS + NEVER_SHIPPED if m in client_libs]
    assert not [m for m in NEVER_SHIPPED if m in server_libs]
    units = [f"/lib/systemd/system/{u}.service" for u in UNITS]
    verify = box.run("systemd-analyze", "verify", *units, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def start_controller(box: debroot.Booted, ip: str = "127.0.0.1") -> dict[str, str]:
    """Start cvlan-controller by its unit; make a tenant, a CVLAN and a join token with the cvlan CLI."""
    box.sh(
        f"printf 'CVLAN_CONTROLLER_LISTEN={ip}:8443\\n"
        f"CVLAN_CONTROLLER_PUBLIC_URL=https://{ip}:8443\\n' >> /etc/cvlan/controller.env\n"
        "systemctl start cvlan-controller"
    )
    conf = "/var/lib/cvlan-controller/admin.conf"
    wait_for(box, f"test -s {conf} && CVLAN_CONFIG={conf} cvlan tenant list", "controller answers")
    box.sh(
        f"export CVLAN_CONFIG={conf}; cvlan tenant create acme >/dev/null; "
        "cvlan cvlan create --tenant acme office >/dev/null"
    )
    tok = box.sh(
        f"CVLAN_CONFIG={conf} cvlan --json token create --tenant acme --cvlan office --reusable --uses 5"
    ).stdout
    out = json.loads(tok)
    pin = re.search(r"--ca-pin (\S+)", out["join_command"])
    assert pin is not None, out["join_command"]
    return {"token": out["token"], "ca_pin": pin.group(1)}


def join(box: debroot.Booted, token: dict[str, str], server: str = "https://127.0.0.1:8443") -> None:
    """Join with `cvlan-ctrl join` where it exists; else enrol with the first-start flags, then let the
    units run the node (the identity is in /var/lib/cvlan-ctrl either way)."""
    has_join = "--service-manager" in box.run("cvlan-ctrl", "join", "--help", check=False).stdout
    if has_join:
        box.run(
            "cvlan-ctrl",
            "join",
            "--server",
            server,
            "--token",
            "-",
            "--ca-pin",
            token["ca_pin"],
            "--service-manager",
            "systemd",
            "--timeout",
            "60",
            stdin=token["token"] + "\n",
            timeout=90,
        )
        return
    box.run("systemctl", "start", "cvland")
    box.sh(
        "runuser -u cvlan-ctrl -- cvlan-ctrl --state-dir /var/lib/cvlan-ctrl "
        f"--cvland-socket /run/cvland/cvland.sock --server {server} --token {token['token']} "
        f"--ca-pin {token['ca_pin']} >/tmp/enrol.log 2>&1 & echo $! > /tmp/enrol.pid"
    )
    wait_for(box, "test -s /var/lib/cvlan-ctrl/state.db", "enrolment writes state.db")
    box.sh("kill $(cat /tmp/enrol.pid); while kill -0 $(cat /tmp/enrol.pid) 2>/dev/null; do sleep 0.2; done")
    box.run("systemctl", "start", "cvlan-ctrl")


def identity(box: debroot.Booted) -> tuple[object, ...]:
    """(node id, overlay address, WireGuard key) once the node is up through its units."""
    out = wait_for(
        box,
        'cvlancli status --json | grep -q \'"address": "100\\.\' && cvlancli status --json',
        "node is online",
    )
    st = json.loads(out)
    # A digest of the WireGuard private key as stored in the node's state.db (read with the package's python).
    key = box.run(
        "/opt/cvlan/client/bin/python",
        "-c",
        "import hashlib, sqlite3; print(hashlib.sha256(sqlite3.connect("
        "'file:/var/lib/cvlan-ctrl/state.db?mode=ro', uri=True)"
        ".execute(\"SELECT value FROM kv WHERE key = 'wg_private_key'\")"
        ".fetchone()[0].encode()).hexdigest())",
    ).stdout.strip()
    assert key
    return st["node_id"], st["address"], key


def main_pids(box: debroot.Booted, units: tuple[str, ...]) -> list[str]:
    return [box.run("systemctl", "show", "-p", "MainPID", "--value", u).stdout.strip() for u in units]


def test_packages_install_run_upgrade_and_purge(box: debroot.Booted) -> None:
    box.sh("dpkg -i /debs/v1/cvlan-client_*.deb /debs/v1/cvlan-server_*.deb")
    check_install(box)
    assert box.run("systemctl", "is-active", "cvland", check=False).stdout.strip() == "inactive"

    token = start_controller(box)
    join(box, token)
    before = identity(box)
    sock = box.run("stat", "-c", "%a %U %G", "/run/cvland/cvland.sock").stdout.strip()
    assert sock == "660 root cvlan"
    running = ("cvland", "cvlan-ctrl", "cvlan-controller")
    pids = main_pids(box, running)

    # Upgrade: the running units restart on the new version; the node keeps id, address and key.
    box.sh("dpkg -i /debs/v2/cvlan-client_*.deb /debs/v2/cvlan-server_*.deb")
    assert box.run("dpkg-query", "-W", "-f", "${Version}", "cvlan-client").stdout == UPGRADE_VERSION
    after_pids = main_pids(box, running)
    assert all(a != b and a != "0" for a, b in zip(after_pids, pids, strict=True)), (pids, after_pids)
    assert identity(box) == before

    # No WireGuard at all: cvland refuses with one line and status 2, and is not restarted.
    box.sh("systemctl stop cvlan-ctrl cvland; mv /usr/bin/wireguard-go /usr/bin/wireguard-go.off")
    assert "neither kernel WireGuard nor wireguard-go" in box.run("dpkg-reconfigure", "cvlan-client").stderr
    box.run("systemctl", "start", "cvland", check=False)
    time.sleep(3)  # a restart loop would have restarted it within RestartSec=2s
    show = box.run("systemctl", "show", "-p", "ActiveState,ExecMainStatus,NRestarts", "cvland").stdout
    assert sorted(show.split()) == ["ActiveState=failed", "ExecMainStatus=2", "NRestarts=0"]
    journal = box.run("journalctl", "-u", "cvland", "-o", "cat", "--no-pager").stdout
    assert "cvland: no WireGuard on this host" in journal
    box.run("mv", "/usr/bin/wireguard-go.off", "/usr/bin/wireguard-go")

    # Purge: no user, group, directory, unit, environment or nftables table is left.
    box.sh("dpkg --purge cvlan-client cvlan-server")
    for u in (*USERS, "cvlan"):
        assert box.run("getent", "passwd", u, check=False).returncode == 2
        assert box.run("getent", "group", u, check=False).returncode == 2
    left = box.sh(
        "ls -d /var/lib/cvlan* /var/lib/cvland /etc/cvlan /opt/cvlan /run/cvland /run/cvlan-controller "
        "/usr/bin/cvlan* /usr/bin/cvland /etc/systemd/system/*cvlan* /etc/systemd/system/*/cvlan* "
        "/lib/systemd/system/cvlan* /lib/systemd/system/cvland* 2>/dev/null || true"
    ).stdout
    assert left == ""
    assert "cvlan" not in box.run("nft", "list", "tables").stdout


def test_controller_and_two_nodes_from_the_packages_ping_each_other(
    debs: dict[str, Path], base_root: Path, lab: Lab, tmp_path: Path
) -> None:
    # Three booted roots (copy-on-write over the unpacked root), each in a lab namespace with a public
    # address: the controller's units on one, cvland and cvlan-ctrl from cvlan-client on the others.
    # The three boot at once, and the two nodes install and join at once.
    hosts = {name: lab.public_host(name) for name in ("ctl", "n0", "n1")}
    boxes: dict[str, debroot.Booted] = {}
    roots: list[Path] = []
    try:
        for name, ns in hosts.items():
            roots.append(debroot.overlay(base_root, tmp_path / name))
            binds = {debs["v1"]: "/debs/v1"}
            boxes[name] = debroot.Booted(roots[-1], f"cvlan{name}{os.getpid() % 10000}", binds, ns.name)
        for b in boxes.values():
            b.wait_booted()
        boxes["ctl"].sh("dpkg -i /debs/v1/cvlan-server_*.deb")
        ctl_ip = hosts["ctl"].ip
        token = start_controller(boxes["ctl"], ctl_ip)

        def node_address(name: str) -> str:
            boxes[name].sh("dpkg -i /debs/v1/cvlan-client_*.deb")
            join(boxes[name], token, f"https://{ctl_ip}:8443")
            return str(identity(boxes[name])[1]).split("/")[0]

        with ThreadPoolExecutor(2) as pool:
            addrs = dict(zip(("n0", "n1"), pool.map(node_address, ("n0", "n1")), strict=True))
        for src, dst in (("n0", "n1"), ("n1", "n0")):
            wait_for(boxes[src], f"ping -c1 -W1 {addrs[dst]}", f"{src} pings {dst} over the overlay")
    finally:
        for b in boxes.values():
            b.close()
        for r in roots:
            debroot.remove_overlay(r)
