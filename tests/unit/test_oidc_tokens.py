"""ID-token verification (cvlan.controller.oidc.client) on tokens a real provider cannot be made to
issue: another issuer, another audience, a bad signature, a wrong nonce, out-of-time tokens, and a
key the controller has not seen yet (rotation). The provider's discovery document and keys are
served on loopback; the tokens are signed here with joserfc."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import RSAKey

from cvlan.common.clock import FakeClock
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.oidc.client import OidcClient
from cvlan.controller.settings import OidcProviderSettings

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
T = int(NOW.timestamp())


@functools.cache
def _key(kid: str, n: int = 0) -> RSAKey:
    """An RSA key (made once per test run: generating one takes a while); n tells apart two keys
    with the same id."""
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})


class Idp:
    """Discovery and JWKS on loopback, with the keys it publishes changeable."""

    def __init__(self) -> None:
        self.keys = [_key("k1")]
        self.jwks_reads = 0
        self.server: TestServer | None = None

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": self.issuer + "/jwks",
                "authorization_endpoint": self.issuer + "/auth",
                "token_endpoint": self.issuer + "/token",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _jwks(self, _: web.Request) -> web.Response:
        self.jwks_reads += 1
        return web.json_response({"keys": [k.as_dict(private=False) for k in self.keys]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        return app

    def token(self, key: RSAKey | None = None, **claims: Any) -> dict[str, Any]:
        body = {"iss": self.issuer, "sub": "u1", "aud": "cvlan", "iat": T, "exp": T + 300, "nonce": "n1"}
        body.update({"email": "u1@example.com", "email_verified": True, "groups": ["ops"]})
        body.update(claims)
        body = {k: v for k, v in body.items() if v != "drop"}
        k = key or self.keys[0]
        return {"id_token": jwt.encode({"alg": "RS256", "kid": k.kid}, body, k)}


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    i = Idp()
    i.server = TestServer(i.app(), host="127.0.0.1")
    await i.server.start_server()
    try:
        yield i
    finally:
        await i.server.close()


def _client(idp: Idp, **settings: Any) -> OidcClient:
    cfg = OidcProviderSettings(name="t", issuer=idp.issuer, client_id="cvlan", client_secret="s", **settings)
    return OidcClient(cfg, FakeClock(NOW))


async def _refusal(idp: Idp, token: dict[str, Any], nonce: str = "n1") -> str:
    with pytest.raises(DomainError) as e:
        await _client(idp).verify_id_token(token, nonce)
    assert e.value.kind == Kind.UNAUTHENTICATED
    return e.value.message


async def test_a_good_token_names_the_person(idp: Idp) -> None:
    c = await _client(idp).verify_id_token(idp.token(email="U1@Example.com"), "n1")
    assert (c.subject, c.email, c.email_verified, c.groups) == ("u1", "u1@example.com", True, ("ops",))


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"iss": "https://other.example"}, "the ID token was issued by another identity provider"),
        ({"aud": "someone-else"}, "the ID token was issued for another application (audience)"),
        ({"exp": T - 61}, "the ID token has expired (check the clocks)"),
        ({"nbf": T + 61}, "the ID token is not valid yet (check the clocks)"),
        ({"iat": T + 61}, "the ID token was issued in the future (check the clocks)"),
        ({"nonce": "other"}, "the ID token does not carry this sign-in's nonce"),
    ],
)
async def test_a_bad_claim_is_refused_with_its_reason(idp: Idp, claims: dict[str, Any], message: str) -> None:
    assert (await _refusal(idp, idp.token(**claims))).startswith("sign-in with t refused: " + message)


async def test_the_clock_skew_allowance_is_honoured(idp: Idp) -> None:
    c = await _client(idp).verify_id_token(idp.token(exp=T - 59, iat=T - 400), "n1")
    assert c.subject == "u1"


async def test_a_token_without_the_nonce_of_a_sign_in_that_sent_one_is_refused(idp: Idp) -> None:
    tok = idp.token()
    assert "nonce" in await _refusal(idp, tok, nonce="n2")


async def test_a_bad_signature_is_refused(idp: Idp) -> None:
    forged = _key("k1", 1)  # the published key's id, another key
    assert (await _refusal(idp, idp.token(key=forged))).endswith("the ID token's signature is not valid")


async def test_a_rotated_key_is_fetched_once_when_first_seen(idp: Idp) -> None:
    client = _client(idp)
    await client.verify_id_token(idp.token(), "n1")
    assert idp.jwks_reads == 1
    idp.keys = [_key("k2")]
    c = await client.verify_id_token(idp.token(), "n1")
    assert c.subject == "u1" and idp.jwks_reads == 2


async def test_no_id_token_is_refused(idp: Idp) -> None:
    assert "sent no ID token" in await _refusal(idp, {"access_token": "x"})


@pytest.mark.parametrize(
    ("flag", "when_absent", "verified"),
    [
        (True, False, True),
        (False, False, False),
        (None, False, False),
        (None, True, True),
        (False, True, False),
    ],
)
async def test_email_verified_is_what_the_token_says_or_the_setting_when_absent(
    idp: Idp, flag: bool | None, when_absent: bool, verified: bool
) -> None:
    tok = idp.token(email_verified="drop" if flag is None else flag)  # "drop": no such claim
    client = _client(idp, email_verified_when_absent=when_absent)
    assert (await client.verify_id_token(tok, "n1")).email_verified is verified
