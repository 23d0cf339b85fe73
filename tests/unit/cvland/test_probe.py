"""Peer health probes: the codec and the per-peer accounting of RTT and loss."""

from __future__ import annotations

import pytest

from cvlan.cvland.daemon import probe_targets, routed_via_vrouter
from cvlan.cvland.probe import ProbeBook
from cvlan.dataplane.firewall import render_ruleset
from cvlan.wire import healthprobe as hp
from cvlan.wire.ipc import DesiredState, PeerConfig

A = "a" * 64
B = "b" * 64


def test_probe_round_trip_and_reply() -> None:
    req = hp.Probe(hp.ProbeKind.REQUEST, 7, 123456789)
    assert hp.parse(hp.pack(req)) == req
    rep = hp.parse(hp.pack(hp.reply_to(req)))
    assert (rep.kind, rep.seq, rep.sent_ns) == (hp.ProbeKind.REPLY, 7, 123456789)
    assert len(hp.pack(req)) == hp.PROBE_LEN == 17


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"CVHP", "health probe is 4 bytes, expected 17"),
        (b"XXXX" + bytes(13), "health probe magic is not CVHP"),
        (b"CVHP\x03" + bytes(12), "health probe kind 3 is neither request (1) nor reply (2)"),
    ],
)
def test_probe_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(hp.ProbeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hp.parse(data)


def test_probe_pack_refuses_out_of_range_sequence() -> None:
    with pytest.raises(hp.ProbeError):
        hp.pack(hp.Probe(hp.ProbeKind.REQUEST, 2**32, 0))


def test_loss_counts_only_probes_old_enough_to_have_been_answered() -> None:
    book = ProbeBook(window=20, timeout_s=3.0)
    book.set_targets({A: "100.64.0.2"})
    seqs = [book.sent(A, float(t)) for t in range(10)]  # one probe a second, t = 0..9
    for i, s in enumerate(seqs):
        if i % 5 != 0 and s is not None:  # every fifth probe lost
            assert book.answered("100.64.0.2", s, i + 0.020)
    st = book.stats(A, now=9.5)
    # Probes 7, 8 and 9 are answered; 5 is lost (6.5 s old); the window holds 10 probes.
    assert (st.sent, st.answered) == (10, 8)
    assert st.loss == pytest.approx(0.2)
    assert st.rtt_s == pytest.approx(0.020)


def test_unanswered_young_probe_is_not_yet_lost() -> None:
    book = ProbeBook(timeout_s=3.0)
    book.set_targets({A: "100.64.0.2"})
    book.sent(A, 10.0)
    assert book.stats(A, 11.0).sent == 0
    assert book.stats(A, 13.0).sent == 1
    assert book.stats(A, 13.0).loss == 1.0


def test_window_is_bounded_and_late_or_unknown_replies_are_ignored() -> None:
    book = ProbeBook(window=4, timeout_s=1.0)
    book.set_targets({A: "100.64.0.2"})
    first = book.sent(A, 0.0)
    for t in range(1, 6):
        book.sent(A, float(t))
    assert first is not None
    assert not book.answered("100.64.0.2", first, 6.0)  # fell out of the window
    assert not book.answered("100.64.0.9", 2, 6.0)  # not a peer
    assert book.stats(A, 10.0).sent == 4


def test_reply_is_counted_once() -> None:
    book = ProbeBook()
    book.set_targets({A: "100.64.0.2"})
    s = book.sent(A, 0.0)
    assert s is not None
    assert book.answered("100.64.0.2", s, 0.01)
    assert not book.answered("100.64.0.2", s, 0.02)
    assert book.stats(A, 5.0).answered == 1


def test_new_address_starts_over_and_departed_peers_are_forgotten() -> None:
    book = ProbeBook(timeout_s=1.0)
    book.set_targets({A: "100.64.0.2", B: "100.64.0.3"})
    book.sent(A, 0.0)
    book.sent(B, 0.0)
    book.set_targets({A: "100.64.0.2"})
    assert book.stats(A, 5.0).sent == 1
    assert book.stats(B, 5.0).sent == 0
    assert book.sent(B, 5.0) is None
    book.set_targets({A: "100.64.0.7"})
    assert book.stats(A, 5.0).sent == 0


def _state(peers: list[PeerConfig]) -> DesiredState:
    return DesiredState(
        version=1,
        node_id=1,
        private_key="c" * 64,
        address="100.64.0.1/32",
        cvlan_subnet="100.64.0.0/24",
        peers=peers,
    )


def test_probe_targets_are_members_not_vrouters() -> None:
    ds = _state(
        [
            PeerConfig(public_key=A, allowed_ips=["100.64.0.2/32"], address="100.64.0.2/32", node_id=2),
            PeerConfig(public_key=B, allowed_ips=[], address="100.64.0.3/32", node_id=3),
            PeerConfig(public_key="d" * 64, allowed_ips=["100.64.0.0/24"], via_vrouter=True),
        ]
    )
    assert probe_targets(ds) == {A: "100.64.0.2", B: "100.64.0.3"}
    assert [routed_via_vrouter(p) for p in ds.peers] == [False, True, False]


def test_firewall_accepts_probes_from_the_cvlan_before_the_policy() -> None:
    text = render_ruleset("cvlan0", "100.64.0.0/24", [{"action": "drop", "proto": "udp"}])
    probe = f'iifname "cvlan0" ip saddr 100.64.0.0/24 udp dport {hp.PROBE_PORT} accept'
    assert probe in text
    assert text.index(probe) < text.index("meta l4proto udp")


def test_restart_forgets_the_losses_of_the_previous_path() -> None:
    book = ProbeBook(timeout_s=1.0)
    book.set_targets({A: "100.64.0.2"})
    for t in range(5):
        book.sent(A, float(t))  # none answered: the tunnel was still coming up
    assert book.stats(A, 10.0).loss == 1.0
    book.restart(A)
    s = book.sent(A, 10.0)
    assert s is not None and book.answered("100.64.0.2", s, 10.001)
    assert (book.stats(A, 12.0).sent, book.stats(A, 12.0).loss) == (1, 0.0)
