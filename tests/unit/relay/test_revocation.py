"""ControllerChecker's verdicts over the controller's answers and failures (the calls themselves
are the integration tests'): a kept "revoked", the fail-open window, batches of 1,000."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cvlan.client.bootstrap import ControllerCallError
from cvlan.controller.ca import CertificateAuthority
from cvlan.relay.bootstrap import RelayIdentity
from cvlan.relay.revocation import CHECK_BATCH, ControllerChecker, FrontError, Verdict, front_hint
from cvlan.wire.certid import NodeIdentity

NOT_AFTER = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _node(i: int) -> NodeIdentity:
    return NodeIdentity(
        node_id=i, tenant_id=1, cvlan_id=1, wg_key=i.to_bytes(32, "big"), serial=i, not_after=NOT_AFTER
    )


class Scripted(ControllerChecker):
    """The controller's side replaced by a script: an answer for every node, or an error to raise."""

    def __init__(self, d: Path, fail_open_s: float = 300.0) -> None:
        ca = CertificateAuthority.load_or_create(d)
        crt, key = ca.issue_server(["relay.example.net"], d)
        ident = RelayIdentity("r1", "eu", "https://r1", "", crt, key, ca.cert_pem.decode())
        super().__init__("https://ctrl.example.net", ident, ttl=60.0, fail_open_s=fail_open_s, now=0.0)
        self.answer: bool | ControllerCallError = True
        self.batches: list[int] = []
        self.ident = ident
        self.renew_once = False

    async def _post(self, nodes: list[NodeIdentity]) -> list[bool]:
        self.batches.append(len(nodes))
        if self.renew_once:  # the relay renewed while this check was on its way: refused once
            self.renew_once = False
            self.use(self.ident)
            raise ControllerCallError("http 401: relay certificate is no longer current", status=401)
        if isinstance(self.answer, ControllerCallError):
            raise self.answer
        return [self.answer] * len(nodes)


async def test_revoked_is_kept_while_the_controller_is_silent(tmp_path: Path) -> None:
    c = Scripted(tmp_path)
    c.answer = False
    assert (await c.check([_node(1)], 1.0)) == ([Verdict.REVOKED], "")
    c.answer = ControllerCallError("down", retryable=True)
    verdicts, error = await c.check([_node(1), _node(2)], 1000.0, fresh=True)
    assert verdicts == [Verdict.REVOKED, Verdict.UNCHECKED] and error == "down"


async def test_fail_open_lasts_the_window_then_closes(tmp_path: Path) -> None:
    c = Scripted(tmp_path, fail_open_s=300.0)
    c.answer = True
    await c.check([_node(1)], 10.0)
    c.answer = ControllerCallError("down", retryable=True)
    assert (await c.check([_node(1), _node(2)], 310.0, fresh=True))[0] == [Verdict.VALID, Verdict.VALID]
    assert (await c.check([_node(1), _node(2)], 311.0, fresh=True))[0] == [Verdict.UNCHECKED] * 2


async def test_definite_refusal_fails_closed_at_once(tmp_path: Path) -> None:
    c = Scripted(tmp_path)
    c.answer = ControllerCallError("http 401: relay certificate is no longer current", status=401)
    assert (await c.check([_node(1)], 1.0))[0] == [Verdict.REFUSED]


async def test_refusal_of_a_check_that_crossed_a_renewal_is_asked_again(tmp_path: Path) -> None:
    c = Scripted(tmp_path)
    c.renew_once = True
    assert (await c.check([_node(1)], 1.0)) == ([Verdict.VALID], "")
    assert c.batches == [1, 1]


async def test_checks_go_in_batches_the_controller_accepts(tmp_path: Path) -> None:
    c = Scripted(tmp_path)
    verdicts, _ = await c.check([_node(i) for i in range(2 * CHECK_BATCH + 5)], 1.0)
    assert c.batches == [CHECK_BATCH, CHECK_BATCH, 5] and set(verdicts) == {Verdict.VALID}


def test_front_hint_names_the_fix_in_one_line() -> None:
    e = front_hint("https://front:8443", ControllerCallError("x: http 404: not found", status=404))
    assert isinstance(e, FrontError) and "controller's own listener" in str(e) and "\n" not in str(e)
    other = ControllerCallError("x: http 401", status=401)
    assert front_hint("https://front:8443", other) is other
