"""The node protocol codecs: round trips, map assembly from cached pieces, exact errors, fuzzed decoders."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb

MESSAGES = [
    pb.DiscoverResponse,
    pb.RegisterRequest,
    pb.RegisterResponse,
    pb.PollRequest,
    pb.PollResponse,
    pb.RenewRequest,
    pb.RenewResponse,
    pb.ReportRequest,
    pb.ReportResponse,
]

peers = st.builds(
    pb.Peer,
    node_id=st.integers(1, 2**40),
    name=st.text(max_size=20),
    wg_public_key=st.binary(min_size=32, max_size=32),
    address=st.just("100.64.0.2/32"),
    endpoints=st.lists(st.just("192.0.2.1:51820"), max_size=3),
)


@given(st.lists(peers, max_size=12), st.integers(0, 2**63), st.integers(1, 2**40))
def test_composed_map_equals_the_built_message(ps: list[pb.Peer], version: int, me: int) -> None:
    common = pb.NetworkMap(version=version, cvlan_subnet="100.64.0.0/24", mode="mesh").SerializeToString()
    self_part = pb.NetworkMap(self=pb.SelfNode(node_id=me)).SerializeToString()
    head = pb.PollResponse(map_version=version, poll_interval_s=30)
    body = wire.compose_poll_response(head, [common, self_part, *(wire.peer_chunk(p) for p in ps)])
    want = pb.PollResponse(
        map_version=version,
        poll_interval_s=30,
        map=pb.NetworkMap(
            version=version, cvlan_subnet="100.64.0.0/24", mode="mesh", self=pb.SelfNode(node_id=me), peers=ps
        ),
    )
    assert wire.decode(pb.PollResponse, body) == want


def test_len_field_uses_multibyte_varints() -> None:
    payload = b"x" * 300
    assert wire.len_field(3, payload)[:3] == bytes([0x1A, 0xAC, 0x02])


@pytest.mark.parametrize("ct", [wire.CT_PROTO, wire.CT_JSON])
def test_round_trip_both_encodings(ct: str) -> None:
    m = pb.PollRequest(
        capability_version=1,
        map_version=7,
        endpoints=["192.0.2.1:1"],
        long_poll_s=30,
        health=pb.HealthSummary(peers_total=3, dataplane_error="x"),
    )
    assert wire.decode(pb.PollRequest, wire.encode(m, ct), ct) == m


def test_decode_errors_name_the_message() -> None:
    with pytest.raises(wire.WireError, match="^PollRequest: body is not a valid protobuf message$"):
        wire.decode(pb.PollRequest, b"\xff\xff\xff")
    with pytest.raises(wire.WireError, match="^RegisterRequest: body is not valid protobuf JSON"):
        wire.decode(pb.RegisterRequest, b"{not json", wire.CT_JSON)
    with pytest.raises(wire.WireError, match="not valid protobuf JSON"):
        wire.decode(pb.RegisterRequest, b"\xff\xfe", wire.CT_JSON)


def test_unknown_fields_are_tolerated() -> None:
    newer = pb.PollRequest(capability_version=1).SerializeToString() + wire.len_field(99, b"future")
    assert wire.decode(pb.PollRequest, newer).capability_version == 1
    assert (
        wire.decode(
            pb.PollRequest, b'{"capability_version": 1, "future": 2}', wire.CT_JSON
        ).capability_version
        == 1
    )


def test_capability_versions() -> None:
    assert wire.check_capver(wire.CAPABILITY_VERSION) is None
    assert wire.check_capver(wire.CAPABILITY_VERSION + 5) is None
    assert wire.check_capver(0) == "capability_version is missing (unknown client version)"
    assert wire.MIN_SUPPORTED_CAPVER <= wire.CAPABILITY_VERSION


@settings(max_examples=300)
@given(st.sampled_from(MESSAGES), st.binary(max_size=512))
def test_fuzz_binary_decoder_only_raises_wire_error(cls: type, data: bytes) -> None:
    try:
        wire.decode(cls, data)
    except wire.WireError:
        pass


@settings(max_examples=300)
@given(st.sampled_from(MESSAGES), st.one_of(st.binary(max_size=256), st.text(max_size=256).map(str.encode)))
def test_fuzz_json_decoder_only_raises_wire_error(cls: type, data: bytes) -> None:
    try:
        wire.decode(cls, data, wire.CT_JSON)
    except wire.WireError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["token", "map_version", "endpoints", "health", "peers_total", "x"]),
                c,
                max_size=3,
            )
        ),
        max_leaves=10,
    )
)
def test_fuzz_json_shapes(obj: object) -> None:
    import json

    for cls in (pb.PollRequest, pb.RegisterRequest):
        try:
            wire.decode(cls, json.dumps(obj).encode(), wire.CT_JSON)
        except wire.WireError:
            pass
