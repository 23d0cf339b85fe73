"""The OpenID Connect relying party for one identity provider, on Authlib.

Discovery is read from the issuer's /.well-known/openid-configuration and kept DISCOVERY_TTL; the
signing keys (JWKS) likewise, and read again at once when an ID token names a key we do not hold
(the provider rotated its keys). ID tokens are verified by joserfc (signature, with the algorithms
the provider announces) and Authlib's CodeIDToken rules (issuer, audience, expiry, not-before,
issued-at, nonce, at_hash), at the controller's clock with the provider's clock_skew_s. Nothing here
parses a token by hand."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2
from aiohttp import web
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import BadSignatureError, ClaimError, ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from cvlan.common.clock import Clock
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.settings import OidcProviderSettings

DISCOVERY_TTL = dt.timedelta(hours=1)
HTTP_TIMEOUT_S = 10.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
CLAIM_WORDS = {
    "iss": "was issued by another identity provider",
    "aud": "was issued for another application (audience)",
    "nbf": "is not valid yet (check the clocks)",
    "iat": "was issued in the future (check the clocks)",
    "nonce": "does not carry this sign-in's nonce (a replayed or mixed-up answer)",
    "at_hash": "does not belong to its access token",
    "azp": "was issued for another application (authorized party)",
}


@dataclass(frozen=True)
class IdClaims:
    """What a verified ID token says about the person."""

    issuer: str
    subject: str
    email: str
    email_verified: bool
    groups: tuple[str, ...]


@dataclass(frozen=True)
class DeviceStart:
    """A device authorization: the code the CLI polls with and what the person must open."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    interval: int
    expires_in: int


class OidcClient:
    """One configured provider: discovery, authorization URLs, code and device grants, ID tokens."""

    def __init__(self, cfg: OidcProviderSettings, clock: Clock) -> None:
        self.cfg = cfg
        self._clock = clock
        self._meta: dict[str, Any] = {}
        self._meta_at: dt.datetime | None = None
        self._jwks: dict[str, Any] | None = None
        self._jwks_at: dt.datetime | None = None
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(cfg.ca_file)) if cfg.ca_file else True
        )

    @property
    def name(self) -> str:
        return self.cfg.name

    def refused(self, why: str) -> DomainError:
        return DomainError(Kind.UNAUTHENTICATED, f"sign-in with {self.cfg.label} refused: {why}")

    def _down(self, what: str, e: Exception | str) -> DomainError:
        return DomainError(
            Kind.UNAVAILABLE,
            f"identity provider {self.cfg.label} is unreachable ({what}: {e}); try again later",
        )

    def _oauth(self, redirect_uri: str | None = None) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.cfg.client_id,
            client_secret=self.cfg.secret(),
            scope=" ".join(self.cfg.scopes),
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT_S,
            verify=self._verify,
        )

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=self._verify) as c:
                r = await c.get(url)
        except httpx2.HTTPError as e:
            raise self._down(what, e) from None
        if r.status_code != 200:
            raise self._down(what, f"HTTP {r.status_code}")
        try:
            body = r.json()
        except ValueError:
            raise self._down(what, "not JSON") from None
        if not isinstance(body, dict):
            raise self._down(what, "not a JSON object")
        return body

    def _fresh(self, at: dt.datetime | None) -> bool:
        return at is not None and self._clock.now() - at < DISCOVERY_TTL

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (OpenID Connect Discovery 1.0), cached DISCOVERY_TTL."""
        if not self._fresh(self._meta_at):
            meta = await self._get_json(self.cfg.issuer + "/.well-known/openid-configuration", "discovery")
            if meta.get("issuer", "").rstrip("/") != self.cfg.issuer:
                # Discovery section 4.3: the document must name the issuer it was read from.
                raise self._down("discovery", f"the document names issuer {meta.get('issuer')!r}")
            self._meta, self._meta_at = meta, self._clock.now()
        return self._meta

    async def _endpoint(self, key: str) -> str:
        url = (await self.metadata()).get(key)
        if not isinstance(url, str) or not url:
            raise self._down("discovery", f"no {key} announced")
        return url

    async def key_set(self, force: bool = False) -> KeySet:
        """The provider's signing keys, read again when force or older than DISCOVERY_TTL."""
        if force or self._jwks is None or not self._fresh(self._jwks_at):
            self._jwks = await self._get_json(await self._endpoint("jwks_uri"), "signing keys")
            self._jwks_at = self._clock.now()
        try:
            return KeySet.import_key_set(self._jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as e:
            raise self._down("signing keys", e) from None

    async def authorization_url(self, redirect_uri: str, state: str, nonce: str, code_verifier: str) -> str:
        """Where to send the browser: the authorization code flow with PKCE (S256), state and nonce."""
        endpoint = await self._endpoint("authorization_endpoint")
        async with self._oauth(redirect_uri) as c:
            url, _ = c.create_authorization_url(
                endpoint, state=state, nonce=nonce, code_verifier=code_verifier
            )
        return str(url)

    async def exchange_code(self, redirect_uri: str, code: str, code_verifier: str) -> dict[str, Any]:
        """The token response for an authorization code (client authenticated with its secret)."""
        endpoint = await self._endpoint("token_endpoint")
        try:
            async with self._oauth(redirect_uri) as c:
                token = await c.fetch_token(endpoint, code=code, code_verifier=code_verifier)
        except OAuthError as e:
            raise self.refused(f"the provider did not accept the authorization code ({e.error})") from None
        except httpx2.HTTPError as e:
            raise self._down("token", e) from None
        return dict(token)

    async def start_device(self) -> DeviceStart:
        """A device authorization (RFC 8628): a user code for the person, a device code to poll with."""
        endpoint = await self._endpoint("device_authorization_endpoint")
        form = urlencode({"client_id": self.cfg.client_id, "scope": " ".join(self.cfg.scopes)})
        try:
            async with self._oauth() as oauth:
                # The client authenticates as at the token endpoint (client_secret_basic by default).
                auth = oauth.client_auth(oauth.token_endpoint_auth_method)
                url, headers, body = auth.prepare("POST", endpoint, dict(FORM_HEADERS), form)
            async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=self._verify) as c:
                r = await c.post(url, content=body, headers=headers)
        except httpx2.HTTPError as e:
            raise self._down("device authorization", e) from None
        if r.status_code != 200:
            raise self._down("device authorization", f"HTTP {r.status_code}")
        b = r.json()
        return DeviceStart(
            device_code=str(b["device_code"]),
            user_code=str(b["user_code"]),
            verification_uri=str(b["verification_uri"]),
            verification_uri_complete=str(b.get("verification_uri_complete") or b["verification_uri"]),
            interval=int(b.get("interval", 5)),
            expires_in=int(b.get("expires_in", 600)),
        )

    async def poll_device(self, device_code: str) -> dict[str, Any] | None:
        """The token response once the person approved; None while they have not yet."""
        endpoint = await self._endpoint("token_endpoint")
        try:
            async with self._oauth() as c:
                token = await c.fetch_token(endpoint, grant_type=DEVICE_GRANT, device_code=device_code)
        except OAuthError as e:
            if e.error in ("authorization_pending", "slow_down"):
                return None
            raise self.refused(f"the provider ended the device sign-in ({e.error})") from None
        except httpx2.HTTPError as e:
            raise self._down("token", e) from None
        return dict(token)

    async def verify_id_token(self, token: dict[str, Any], nonce: str | None) -> IdClaims:
        """The person in the token response's ID token, after every check OpenID Connect asks for."""
        raw = token.get("id_token")
        if not isinstance(raw, str):
            raise self.refused("the provider sent no ID token (is the openid scope allowed?)")
        meta = await self.metadata()
        algs = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        registry = JWSRegistry(algorithms=[a for a in algs if a != "none"], strict_check_header=False)
        try:
            try:
                decoded = jwt.decode(raw, await self.key_set(), registry=registry)
            except InvalidKeyIdError:  # a key we have not seen: the provider rotated its keys
                decoded = jwt.decode(raw, await self.key_set(force=True), registry=registry)
        except BadSignatureError:
            raise self.refused("the ID token's signature is not valid") from None
        except JoseError as e:
            raise self.refused(f"the ID token cannot be read ({e.error})") from None
        self._check_claims(decoded.claims, dict(decoded.header), token, nonce)
        c = decoded.claims
        groups = c.get(self.cfg.groups_claim) or []
        return IdClaims(
            issuer=str(c["iss"]),
            subject=str(c["sub"]),
            email=str(c.get("email") or "").strip().lower(),
            email_verified=self._email_verified(c.get("email_verified")),
            groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        )

    def _email_verified(self, flag: object) -> bool:
        if flag is None:
            return self.cfg.email_verified_when_absent
        return flag is True

    def _check_claims(
        self, claims: dict[str, Any], header: dict[str, Any], token: dict[str, Any], nonce: str | None
    ) -> None:
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.cfg.issuer},
            "aud": {"essential": True, "value": self.cfg.client_id},
        }
        params: dict[str, Any] = {"client_id": self.cfg.client_id, "nonce": nonce}
        if "access_token" in token:
            params["access_token"] = token["access_token"]
        now = int(self._clock.now().timestamp())
        try:
            CodeIDToken(claims, header, options, params).validate(now=now, leeway=self.cfg.clock_skew_s)
        except ExpiredTokenError:
            raise self.refused("the ID token has expired (check the clocks)") from None
        except ClaimError as e:
            raise self.refused(
                f"the ID token {CLAIM_WORDS.get(e.claim, 'has a bad ' + e.claim + ' claim')}"
            ) from None


class Providers(dict[str, OidcClient]):
    """The configured providers by name."""

    def get_or_fail(self, name: str) -> OidcClient:
        client = self.get(name)
        if client is None:
            raise DomainError(Kind.NOT_FOUND, f"no identity provider named {name!r}", {"field": "provider"})
        return client


PROVIDERS_KEY = web.AppKey("oidc_providers", Providers)


def build_providers(cfgs: list[OidcProviderSettings], clock: Clock) -> Providers:
    return Providers({c.name: OidcClient(c, clock) for c in cfgs})
