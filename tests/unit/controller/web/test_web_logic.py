"""The web UI's pure logic: session cookies, lockout schedule, error placement, wording."""

from __future__ import annotations

import datetime as dt

from cvlan.controller.db.models import User
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.web import session as sessions
from cvlan.controller.web.core import Form, ago, until
from cvlan.controller.web.describe import describe, show
from cvlan.controller.web.pages_tenant import node_path
from cvlan.controller.web.signin import lock_for

KEY = b"k" * 32
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def _user(pw_hash: str = "$argon2id$abc") -> User:
    return User(id=7, email="a@example.com", password_hash=pw_hash, created_at=T0)


def test_session_cookie_round_trips_and_rejects_tampering() -> None:
    s = sessions.new_session(KEY, _user(), T0)
    text = sessions.encode(KEY, s)
    assert sessions.decode(KEY, text, T0 + dt.timedelta(minutes=1)) == s
    payload, mac = text.split(".")
    assert sessions.decode(KEY, payload + "." + mac[:-2] + "AA", T0) is None
    assert sessions.decode(b"x" * 32, text, T0) is None
    assert sessions.decode(KEY, "garbage", T0) is None
    assert sessions.decode(KEY, "", T0) is None


def test_session_expires_when_idle_and_after_the_absolute_limit() -> None:
    s = sessions.new_session(KEY, _user(), T0)
    text = sessions.encode(KEY, s)
    assert sessions.decode(KEY, text, T0 + sessions.IDLE - dt.timedelta(seconds=1)) is not None
    assert sessions.decode(KEY, text, T0 + sessions.IDLE) is None
    # Activity pushes the idle expiry, but never past the absolute limit.
    cur, t = s, T0
    while True:
        t += dt.timedelta(minutes=30)
        if sessions.decode(KEY, sessions.encode(KEY, cur), t) is None:
            break
        cur = sessions.refreshed(cur, t) or cur
    assert t - T0 <= sessions.ABSOLUTE + dt.timedelta(minutes=30)
    assert t - T0 >= sessions.ABSOLUTE - dt.timedelta(minutes=30)


def test_refresh_is_skipped_while_the_session_is_fresh() -> None:
    s = sessions.new_session(KEY, _user(), T0)
    assert sessions.refreshed(s, T0 + dt.timedelta(minutes=1)) is None
    r = sessions.refreshed(s, T0 + dt.timedelta(minutes=10))
    assert r is not None and r.expires_at == s.expires_at + 600 and r.nonce == s.nonce


def test_password_change_invalidates_the_fingerprint_and_csrf_is_per_session() -> None:
    a, b = sessions.new_session(KEY, _user(), T0), sessions.new_session(KEY, _user(), T0)
    assert sessions.password_fingerprint(KEY, _user("$argon2id$new")) != a.pw_fp
    assert a.csrf(KEY) != b.csrf(KEY) and a.csrf(KEY) == a.csrf(KEY)


def test_lockout_schedule() -> None:
    assert [lock_for(n).total_seconds() for n in range(1, 9)] == [0, 0, 0, 0, 30, 60, 120, 240]
    assert lock_for(50) == dt.timedelta(minutes=15)


def test_form_errors_go_to_the_named_field_or_the_form() -> None:
    f = Form()
    f.fail(DomainError(Kind.INVALID, "bad", {"field": "name"}), ("name", "mode"))
    f.fail(DomainError(Kind.INVALID, "subnet '10/33': nope"), ("name", "subnet"))
    f.fail(
        DomainError(Kind.INVALID, "uses must be at least 1", {"field": "max_uses"}),
        ("uses",),
        {"max_uses": "uses"},
    )
    f.fail(DomainError(Kind.PRECONDITION, "still has 2 nodes"), ("name",))
    assert f.errors == {
        "name": "Bad",
        "subnet": "Subnet '10/33': nope",
        "uses": "Uses must be at least 1",
        "": "Still has 2 nodes",
    }


def test_wording() -> None:
    assert node_path({}) == ""
    assert node_path({"peers_total": 0}) == "no peers"
    assert (
        node_path({"peers_total": 4, "peers_direct": 2, "peers_relay": 1})
        == "2 direct · 1 relay · 1 connecting"
    )
    assert describe("cvlan.create", None, {"name": "office"}) == ("created CVLAN", "office")
    assert describe("token.create", None, {"cvlan": "office", "prefix": "ab"}) == (
        "created an enrollment token for",
        "office",
    )
    assert describe("made.up", None, None) == ("made.up", "")
    assert show(["a", "b"]) == "a, b" and show(None) == "—" and show(True) == "yes" and show([]) == "none"
    assert ago(None) == "never" and ago(T0 - dt.timedelta(hours=3), T0) == "3h ago"
    assert until(T0 + dt.timedelta(days=6, hours=1), T0) == "in 6d" and until(T0, T0) == "expired"


def test_policy_is_shown_one_rule_per_line_and_reads_back_the_same() -> None:
    import json

    from cvlan.controller.web.pages_policy import pretty

    doc = {
        "rules": [{"src": ["tag:web"], "dst": ["tag:db"], "ports": ["5432"]}, {"src": ["*"], "dst": ["*"]}]
    }
    text = pretty(doc)
    assert json.loads(text) == doc
    assert text.count("\n") == 5  # braces, "rules", two rule lines, closing bracket
    stored = {
        "rules": [
            {"action": "accept", "src": ["*"], "dst": ["*"], "proto": "any", "ports": [], "comment": ""}
        ]
    }
    assert json.loads(pretty(stored)) == {"rules": [{"src": ["*"], "dst": ["*"]}]}


def test_non_ascii_cookie_and_tokens_are_refused_not_crashing() -> None:
    from cvlan.controller.web.core import same

    assert sessions.decode(KEY, "é.é", T0) is None
    assert not same("é", "abc") and same("abc", "abc")
