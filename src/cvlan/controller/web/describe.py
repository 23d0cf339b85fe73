"""Plain-words rendering of audit entries and their values for the pages."""

from __future__ import annotations

from typing import Any

VERBS = {
    "tenant.create": "created tenant",
    "tenant.delete": "deleted tenant",
    "cvlan.create": "created CVLAN",
    "cvlan.update": "changed CVLAN",
    "cvlan.delete": "deleted CVLAN",
    "token.create": "created an enrollment token for",
    "token.revoke": "revoked enrollment token",
    "node.register": "enrolled with token",
    "node.rename": "renamed node",
    "node.move": "moved node",
    "node.delete": "deleted node",
    "node.disable": "disabled node",
    "node.enable": "enabled node",
    "node.tags": "changed the tags of node",
    "node.ephemeral_remove": "removed offline ephemeral node",
    "node.reauth": "re-authenticated as node",
    "node.reauth_refused": "was refused re-authentication as node",
    "node.reauth_requested": "asked an admin to approve the re-authentication of node",
    "node.reauth_approve": "approved the re-authentication of node",
    "node.reauth_reject": "rejected the re-authentication of node",
    "node.key_expiry": "changed the key expiry of node",
    "tenant.key_expiry": "changed the key expiry policy of tenant",
    "user.create": "added user",
    "user.delete": "removed user",
    "user.signin": "signed in",
    "user.locked": "was locked out after failed sign-ins",
    "user.password": "changed the password of",
    "apitoken.create": "created API token",
    "apitoken.revoke": "revoked API token",
    "policy.set": "changed the policy of CVLAN",
    "policy.clear": "removed the policy of CVLAN",
    "vrouter.attach": "attached a vrouter to CVLAN",
    "vrouter.detach": "detached a vrouter from CVLAN",
    "region.create": "created region",
    "region.delete": "deleted region",
    "relay.create": "registered relay",
    "relay.delete": "deleted relay",
    "vrouter.create": "registered vrouter",
    "vrouter.delete": "deleted vrouter",
}


def show(v: Any) -> str:
    """A value as a person reads it: lists joined, None as a dash, booleans as yes/no."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(show(x) for x in v) if v else "none"
    if isinstance(v, dict):
        return ", ".join(f"{k}={show(x)}" for k, x in v.items())
    return str(v)


def describe(action: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[str, str]:
    """(verb phrase, object name) of an audit entry, e.g. ('created CVLAN', 'office')."""
    verb = VERBS.get(action, action)
    if action in ("user.signin", "user.locked"):
        return verb, ""
    b, a = before or {}, after or {}
    if action == "node.register":  # the actor is the node itself
        return verb, str(a.get("token", ""))
    if action in ("token.create", "vrouter.attach", "vrouter.detach"):
        return verb, str(a.get("cvlan", b.get("cvlan", "")))
    for key in ("name", "email", "prefix"):
        if key in a or key in b:
            return verb, str(a.get(key, b.get(key)))
    return verb, ""
