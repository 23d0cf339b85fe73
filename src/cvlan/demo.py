"""`make demo`: start a controller on the embedded default (SQLite in ./cvlan-data), create a demo
tenant, CVLAN and enrollment token through the management API, print how to continue, and keep
running until Ctrl-C. Components are started as their own processes, exactly as an operator would."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cvlan.cli.config import load_admin_conf
from cvlan.cli.http import ApiError, Client


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def wait_for_admin_conf(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the controller exited with status {proc.returncode}")
        if path.exists():
            return
        time.sleep(0.2)
    raise SystemExit("demo: the controller did not start within 60 s")


def wait_healthy(client: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.call("GET", "/api/v1/whoami")
            return
        except ApiError:
            time.sleep(0.2)
    raise SystemExit("demo: the controller does not answer")


def ensure(client: Client, method: str, path: str, body: dict[str, object]) -> None:
    try:
        client.call(method, path, body)
    except ApiError as e:
        if e.status != 409:
            raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cvlan-demo", description=__doc__)
    p.add_argument("--data-dir", type=Path, default=Path("cvlan-data"))
    p.add_argument("--listen", default="127.0.0.1:8443")
    args = p.parse_args(argv)
    conf_path = args.data_dir / "admin.conf"
    proc = subprocess.Popen(
        [_bin("cvlan-controller"), "serve", "--data-dir", str(args.data_dir), "--listen", args.listen]
    )
    try:
        if not conf_path.exists():
            wait_for_admin_conf(conf_path, proc)
        conf = load_admin_conf(conf_path)
        client = Client(conf.server, conf.token, conf.ca_pem)
        wait_healthy(client)
        ensure(client, "POST", "/api/v1/tenants", {"name": "demo", "display_name": "Demo tenant"})
        ensure(client, "POST", "/api/v1/tenants/demo/cvlans", {"name": "office"})
        tok = client.call(
            "POST", "/api/v1/tenants/demo/tokens", {"cvlan": "office", "reusable": True, "uses": 10}
        )
        cv = client.call("GET", "/api/v1/tenants/demo/cvlans/office")
        print(
            f"""
CVLAN controller is running (SQLite in {args.data_dir}/, pid {proc.pid}).

  API:          {conf.server}/api/v1  (OpenAPI: {conf.server}/api/v1/openapi.json)
  Metrics:      {conf.server}/metrics
  Admin config: {conf_path} (platform admin token, mode 0600)

Demo tenant 'demo' has CVLAN 'office' ({cv["subnet"]}). A reusable enrollment token (10 uses):
  {tok["join_command"]}

Try the admin CLI (in another shell):
  .venv/bin/cvlan --config {conf_path} cvlan list --tenant demo
  .venv/bin/cvlan --config {conf_path} node list --tenant demo
  .venv/bin/cvlan --config {conf_path} audit --tenant demo

Press Ctrl-C to stop.""",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while proc.poll() is None:
            time.sleep(0.5)
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    except ApiError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
