"""TLS of the controller's listeners, kept current while the controller runs.

Two listeners, two trust roots (docs/OPERATIONS.md, "The controller on the internet"):

* the main listener (`listen`) serves the node API, and the management API and web UI as well, with a
  server certificate the controller's own CA signs: nodes pin that CA, so no public CA can stand in
  for the controller towards them. It asks for (optional) client certificates: the node API's mutual TLS.
* the web listener (`web_listen`, optional) serves the same application with the operator's own
  certificate chain and key (e.g. from ACME), without asking for client certificates, so that
  browsers and admin tools trust it through the system's CAs.

A separate port rather than SNI on one port: with SNI the host name would pick the certificate, and
the one name an operator naturally gives both (ctl.example.net) would hand nodes a certificate their
pinned CA did not sign.

Both are re-checked every `tls_check_interval_s` and on SIGHUP: the CA-signed server certificate is
issued again when two thirds of its lifetime have passed (or the host names changed), and the
operator's files are loaded again when they changed. A new certificate is loaded into the live
SSLContext, so new connections get it and open ones are not disturbed. An operator file that does
not load (a half-written renewal, a key that does not match) is refused with a warning and the
previous certificate stays."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from cryptography import x509

from cvlan.common.clock import Clock
from cvlan.common.files import write_atomic
from cvlan.common.pki import fresh
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.settings import ControllerSettings

log = logging.getLogger(__name__)

SERVER_CRT, SERVER_KEY, SERVER_HOSTS = "server.crt", "server.key", "server.hosts"


def server_hosts(settings: ControllerSettings) -> list[str]:
    """The names and addresses the CA-signed server certificate covers: the public URL's host first."""
    host, _ = settings.host_port
    hosts = [h for h in (host, "localhost", "127.0.0.1") if h not in ("0.0.0.0", "::", "")]
    pub = urlparse(settings.url).hostname
    if pub:
        hosts.insert(0, pub)
    return list(dict.fromkeys(hosts))


def server_cert_due(data_dir: Path, hosts: list[str], now: dt.datetime) -> str:
    """Why the server certificate must be issued (again), or "" while the one on disk is good."""
    crt, key, names = data_dir / SERVER_CRT, data_dir / SERVER_KEY, data_dir / SERVER_HOSTS
    if not crt.exists() or not key.exists():
        return "missing"
    if not names.exists() or names.read_text().split("\n") != hosts:
        return "host names changed"
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
    except ValueError:
        return "unreadable"
    if not fresh(cert, now):
        return f"two thirds of its lifetime passed (expires {cert.not_valid_after_utc:%Y-%m-%d})"
    return ""


def ensure_server_cert(settings: ControllerSettings, ca: CertificateAuthority, now: dt.datetime) -> str:
    """Issue server.crt/server.key if due; the reason it was issued, or ""."""
    hosts = server_hosts(settings)
    why = server_cert_due(settings.data_dir, hosts, now)
    if why:
        ca.issue_server(hosts, settings.data_dir, now)
        write_atomic(settings.data_dir / SERVER_HOSTS, "\n".join(hosts), 0o644)
    return why


def node_context(settings: ControllerSettings, ca: CertificateAuthority) -> ssl.SSLContext:
    """The main listener's context: the CA-signed certificate; client certificates optional."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.data_dir / SERVER_CRT, settings.data_dir / SERVER_KEY)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def web_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The web listener's context: the operator's chain and key; no client certificates asked for."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


@dataclass
class TlsKeeper:
    """Holds the listeners' live SSLContexts and renews or reloads their certificates."""

    settings: ControllerSettings
    ca: CertificateAuthority
    clock: Clock
    node_ctx: ssl.SSLContext = field(init=False)
    web_ctx: ssl.SSLContext | None = field(init=False, default=None)
    _web_stamp: tuple[tuple[int, int, int], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        """Issue the server certificate if due; load the operator's files (OSError/SSLError if they
        do not load: a bad certificate at start is fatal, unlike one at a reload)."""
        why = ensure_server_cert(self.settings, self.ca, self.clock.now())
        if why:
            log.info(f"server certificate issued: {why}")
        self.node_ctx = node_context(self.settings, self.ca)
        s = self.settings
        if s.web_cert is not None and s.web_key is not None:
            self._web_stamp = _stamp(s.web_cert, s.web_key)
            self.web_ctx = web_context(s.web_cert, s.web_key)

    def check(self) -> list[str]:
        """Renew the server certificate if due, reload the operator's files if they changed.
        Returns what changed ("server", "web"), for the log and for tests."""
        changed = []
        why = ensure_server_cert(self.settings, self.ca, self.clock.now())
        if why:
            d = self.settings.data_dir
            self.node_ctx.load_cert_chain(d / SERVER_CRT, d / SERVER_KEY)
            log.info(f"server certificate renewed: {why}")
            changed.append("server")
        if self._reload_web():
            changed.append("web")
        return changed

    def _reload_web(self) -> bool:
        s = self.settings
        if self.web_ctx is None or s.web_cert is None or s.web_key is None:
            return False
        stamp = _stamp(s.web_cert, s.web_key)
        if stamp == self._web_stamp:
            return False
        try:
            web_context(s.web_cert, s.web_key)  # load into a scratch context first: never half-apply
        except (OSError, ssl.SSLError, ValueError) as e:
            log.warning(f"web certificate {s.web_cert} not reloaded, the previous one stays: {e}")
            return False
        self.web_ctx.load_cert_chain(s.web_cert, s.web_key)
        self._web_stamp = stamp
        log.info(f"web certificate reloaded from {s.web_cert}")
        return True

    async def run(self, stop: asyncio.Event, hup: asyncio.Event) -> None:
        """Check every tls_check_interval_s, and at once when hup is set (SIGHUP)."""
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hup.wait())]
            await asyncio.wait(
                waiters, timeout=self.settings.tls_check_interval_s, return_when="FIRST_COMPLETED"
            )
            for w in waiters:
                w.cancel()
            if stop.is_set():
                return
            hup.clear()
            try:
                self.check()
            except (OSError, ssl.SSLError, ValueError) as e:
                log.warning(f"certificate check failed: {e}")
