"""Controller settings: defaults < config file (TOML) < environment (CVLAN_CONTROLLER_*) < flags."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cvlan.wire.dnsnames import DEFAULT_DOMAIN, DnsNameError, check_domain
from cvlan.wire.endpoint import split_hostport


class OidcProviderSettings(BaseModel):
    """One OpenID Connect identity provider people sign in with (docs/AUTH.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    """Short name: in URLs, group mappings (`cvlan oidc map add --provider NAME`) and `cvlan login`."""
    display_name: str = ""
    """Shown on the sign-in button ("Sign in with ..."). Empty: the name."""
    issuer: str
    """The issuer URL; its /.well-known/openid-configuration is read for everything else."""
    client_id: str = Field(min_length=1)
    client_secret: str = ""
    client_secret_file: Path | None = None
    """A file holding the client secret (read at start), instead of client_secret in the config."""
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    groups_claim: str = "groups"
    """The ID-token claim listing the user's groups (Keycloak "groups", Entra ID "groups")."""
    email_verified_when_absent: bool = False
    """Take the email as verified when the ID token does not say (providers such as Entra ID that
    never send email_verified). A token saying email_verified false is refused all the same."""
    clock_skew_s: int = Field(default=60, ge=0, le=600)
    """How far the provider's clock may be from ours when checking the ID token's times."""
    ca_file: Path | None = None
    """PEM bundle to verify the provider's TLS certificate with (a private CA). Empty: the system's."""

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        parts = urlsplit(v)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError("must be an https:// URL (http:// only on loopback, for tests)")
        return v.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError("must include openid")
        return v

    @property
    def label(self) -> str:
        return self.display_name or self.name

    def secret(self) -> str:
        """The client secret: client_secret, or the first line of client_secret_file."""
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text().strip()
        return self.client_secret


class ControllerSettings(BaseSettings):
    """Everything the controller process needs, validated at start."""

    model_config = SettingsConfigDict(env_prefix="CVLAN_CONTROLLER_", extra="forbid")

    data_dir: Path = Path("./cvlan-data")
    db: str = ""
    """SQLAlchemy URL. Empty means SQLite in data_dir (cvlan.db)."""
    listen: str = "127.0.0.1:8443"
    metrics_listen: str = "127.0.0.1:9464"
    """HOST:PORT of the plain-HTTP Prometheus listener (GET /metrics, no authentication: keep it on
    loopback or a management network). Empty: no metrics listener."""
    public_url: str = ""
    """URL nodes and admins use to reach this controller. Empty: derived from listen."""
    tls: bool = True
    """Terminate TLS here (the embedded default). False only behind a TLS-terminating proxy."""
    web_listen: str = ""
    """HOST:PORT of a second listener for the management API and web UI with the operator's own
    certificate (web_cert, web_key), e.g. 0.0.0.0:443. Empty: none (the main listener serves them)."""
    web_cert: Path | None = None
    """PEM certificate chain for web_listen (leaf first), e.g. from ACME. Reloaded when it changes."""
    web_key: Path | None = None
    """PEM private key of web_cert."""
    tls_check_interval_s: float = Field(default=300.0, gt=0)
    """How often the server certificate's age and the web certificate files are checked (and on SIGHUP)."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or networks (CIDR) of TLS fronts such as HAProxy whose X-Client-Cert (node API) and
    X-Forwarded-Proto (web UI) headers are believed."""
    proxy_socket: Path | None = None
    """A Unix socket serving plain HTTP to a TLS front on this host; requests on it are trusted like
    those from trusted_proxies. Created mode 0660: only the front's user or group may connect."""
    proxy_fast_polls: bool = True
    """Answer node API requests on the proxy socket with the built-in lean HTTP/1.1 server (about half
    the controller's CPU per poll); false: the full web stack serves them like every other request."""
    pool_cidr: str = "100.64.0.0/10"
    dns_domain: str = DEFAULT_DOMAIN
    """The domain under which every node is named <node>.<cvlan>.<tenant>.<dns_domain> (docs/DNS.md)."""
    cvlan_prefix: int = 24
    address_quarantine_s: int = 3600
    node_cert_lifetime_s: int = 7 * 86400
    poll_interval_s: int = 30
    max_long_poll_s: int = Field(default=60, ge=0, le=60)
    """The longest a poll is held waiting for a change (advertised in discover; nodes ask for 30 s).
    0: no long-poll, nodes poll every poll_interval_s (plain keep-alive polling)."""
    offline_after_s: int = 90
    ephemeral_offline_s: int = Field(default=600, ge=60)
    """A node enrolled with an ephemeral token is removed after being offline this long."""
    max_body_bytes: int = 1 << 20
    liveness_flush_s: float = 1.0
    log_level: str = "info"
    log_format: str = "text"
    db_pool_size: int = 10
    oidc_providers: list[OidcProviderSettings] = Field(default_factory=list)
    """Identity providers for OpenID Connect sign-in ([[oidc_providers]] tables in the config file)."""

    @field_validator("oidc_providers")
    @classmethod
    def _unique_providers(cls, v: list[OidcProviderSettings]) -> list[OidcProviderSettings]:
        names = [p.name for p in v]
        if len(set(names)) != len(names):
            raise ValueError("provider names must be unique")
        return v

    @field_validator("pool_cidr")
    @classmethod
    def _pool(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)
        if net.version != 4:
            raise ValueError("only IPv4 pools are supported")
        return str(net)

    @field_validator("dns_domain")
    @classmethod
    def _dns_domain(cls, v: str) -> str:
        try:
            return check_domain(v, "dns_domain")
        except DnsNameError as e:
            raise ValueError(str(e)) from None

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (CIDR)") from None
        return v

    @field_validator("cvlan_prefix")
    @classmethod
    def _prefix(cls, v: int) -> int:
        if not 8 <= v <= 30:
            raise ValueError("must be between 8 and 30")
        return v

    @field_validator("listen", "web_listen")
    @classmethod
    def _listen(cls, v: str, info: ValidationInfo) -> str:
        if not v and info.field_name == "web_listen":
            return v
        split_hostport(v, any_port=True, example="127.0.0.1:8443")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, v: str) -> str:
        if v:
            split_hostport(v, any_port=True, example="127.0.0.1:9464")
        return v

    @field_validator("log_format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        if v not in ("text", "json"):
            raise ValueError("must be text or json")
        return v

    @model_validator(mode="after")
    def _web(self) -> ControllerSettings:
        given = (bool(self.web_listen), self.web_cert is not None, self.web_key is not None)
        if any(given) and not all(given):
            raise ValueError("web_listen, web_cert and web_key go together")
        if self.web_listen and not self.tls:
            raise ValueError("web_listen needs TLS (it serves the operator's certificate)")
        return self

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite+aiosqlite:///{(self.data_dir / 'cvlan.db').resolve()}"

    @property
    def host_port(self) -> tuple[str, int]:
        return split_hostport(self.listen, any_port=True)

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        return split_hostport(self.metrics_listen, any_port=True) if self.metrics_listen else None

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host, port = self.host_port
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"


def load_settings(config_file: Path | None, overrides: dict[str, Any]) -> ControllerSettings:
    """Build settings from an optional TOML file, the environment and flag overrides (flags win)."""
    base: dict[str, Any] = {}
    if config_file is not None:
        with config_file.open("rb") as f:
            base = tomllib.load(f)
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    # Init kwargs beat the environment in pydantic-settings; re-apply env for keys the file set
    # but no flag did, so that the order is defaults < file < env < flags.
    from_env = ControllerSettings().model_dump(exclude_unset=True)
    for k, v in from_env.items():
        if k in base and overrides.get(k) is None:
            merged[k] = v
    return ControllerSettings(**merged)
