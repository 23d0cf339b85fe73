"""The management API answers exactly the fields its answer types (ops.views) declare: the types
are the API's documentation, and this holds them to what a client really receives."""

from __future__ import annotations

from typing import Any

from cvlan.controller.ops import views
from tests.harness.controller import RunningController


def _fields(t: Any) -> set[str]:
    return set(t.__required_keys__) | set(t.__optional_keys__)


def _check(answer: dict[str, Any], t: Any) -> None:
    keys = set(answer)
    assert set(t.__required_keys__) <= keys <= _fields(t), (t.__name__, sorted(keys ^ _fields(t)))


async def test_every_answer_has_the_fields_of_its_type(sqlite_controller: RunningController) -> None:
    api = sqlite_controller.api()
    t = "/api/v1/tenants/acme"
    _check((await api.post("/api/v1/tenants", {"name": "acme"})).ok(), views.TenantView)
    _check((await api.get(t)).ok(), views.TenantShown)
    _check((await api.get("/api/v1/whoami")).ok(), views.WhoAmI)
    _check((await api.post(t + "/cvlans", {"name": "lan"})).ok(), views.CvlanView)
    _check((await api.get(t + "/cvlans")).ok()["items"][0], views.CvlanView)
    tok = (await api.post(t + "/tokens", {"cvlan": "lan", "reusable": True})).ok()
    _check(tok, views.EnrollmentTokenCreated)
    _check((await api.delete(f"{t}/tokens/{tok['prefix']}")).ok(), views.EnrollmentTokenView)
    _check(
        (await api.post(t + "/users", {"email": "a@acme.example", "role": "auditor"})).ok(), views.UserCreated
    )
    _check((await api.get(t + "/users")).ok()["items"][0], views.UserView)
    key = (await api.post(t + "/apitokens", {"role": "auditor"})).ok()
    _check(key, views.ApiTokenCreated)
    _check((await api.get(t + "/apitokens")).ok()["items"][0], views.ApiTokenView)
    _check((await api.post("/api/v1/regions", {"name": "eu"})).ok(), views.RegionView)
    relay = {"name": "r1", "region": "eu", "url": "https://r1.example.net", "stun": "r1.example.net:3478"}
    _check((await api.post("/api/v1/relays", relay)).ok(), views.RelayCreated)
    _check((await api.get("/api/v1/relays")).ok()["items"][0], views.RelayView)
    vr = {"name": "v1", "region": "eu", "endpoint": "192.0.2.1:51900"}
    _check((await api.post("/api/v1/vrouters", vr)).ok(), views.VrouterCreated)
    _check((await api.get("/api/v1/vrouters")).ok()["items"][0], views.VrouterView)
    _check((await api.post(t + "/cvlans/lan/vrouters", {"vrouter": "v1"})).ok(), views.AttachmentSet)
    _check((await api.get(t + "/cvlans/lan/vrouters")).ok()["items"][0], views.AttachmentView)
    dns = t + "/cvlans/lan/dns"
    record = {"name": "office", "type": "A", "value": "10.1.0.7"}
    _check((await api.post(dns + "/records", record)).ok(), views.DnsRecordView)
    _check(
        (await api.request("PUT", dns + "/forwarders/corp.example", json={"servers": ["10.1.0.53"]})).ok(),
        views.DnsForwarderView,
    )
    _check((await api.get(dns)).ok(), views.DnsView)
    policy = {"rules": [{"src": ["tag:web"], "dst": ["tag:db"], "proto": "tcp", "ports": ["5432"]}]}
    _check((await api.request("PUT", t + "/cvlans/lan/policy", json=policy)).ok(), views.PolicySet)
    _check((await api.get(t + "/cvlans/lan/policy")).ok(), views.PolicyView)
    rule = {"kind": "route", "prefix": "10.50.0.0/16"}
    _check((await api.post(t + "/cvlans/lan/route-rules", rule)).ok(), views.RouteRuleAdded)
    rules = (await api.get(t + "/cvlans/lan/route-rules")).ok()
    _check(rules, views.Items)
    _check(rules["items"][0], views.RouteRuleView)
    _check((await api.get(t + "/routes")).ok(), views.Items)
    _check((await api.get(t + "/cvlans/lan/vrouters")).ok(), views.Items)
    _check((await api.get("/api/v1/auth/providers")).ok(), views.Items)
    _check((await api.get(t + "/oidc-mappings")).ok(), views.Items)
    passwords_on = {"local_passwords": True}
    _check((await api.request("PUT", t + "/signin-policy", json=passwords_on)).ok(), views.SigninPolicy)
    _check((await api.get(t + "/audit")).ok()["items"][0], views.AuditView)
