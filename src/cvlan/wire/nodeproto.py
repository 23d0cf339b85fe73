"""The node protocol's version, limits and pure codecs (no I/O).

The messages themselves are generated from proto/cvlan/v1/node.proto into cvlan.wire.pb.node_pb2."""

from __future__ import annotations

import hashlib
import hmac
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from cvlan.wire.pb import node_pb2 as pb

CAPABILITY_VERSION = 2
# History (bump with a dated line; removed fields/values are reserved, never reused):
#   - 1: 2026-11-26: initial node protocol: discover, register, poll (full maps, long-poll),
#        renew, report; relay map; vrouters; filter-rule placeholder.
#   - 2: 2026-12-06: RouteAdvert in register and poll; Peer.routes/exit_node and
#        SelfNode.routes/exit_node (subnet routes and exit nodes).
MIN_SUPPORTED_CAPVER = 1
# No compatibility paths are kept yet. When one is added for old nodes, note here the
# capability version at which it can be deleted.

CT_PROTO = "application/x-protobuf"
CT_JSON = "application/json"

MAX_REQUEST_BYTES = 64 * 1024
"""The largest node API request body accepted (a CSR plus a few endpoints is < 2 KB)."""
MAX_ENDPOINTS = 16
MAX_ENDPOINT_LEN = 64
MAX_HOSTNAME_LEN = 63
MAX_DENIED_FLOWS = 1000
MAX_HEALTH_PEERS = 64
"""Peer entries in one health report (HealthSummary.peers); the rest are counted in peers_omitted."""
HEALTH_REFRESH_S = 300.0
"""A node reports its peers' health when it changes (path, region, loss or RTT band) and, unchanged,
again after this long: a report at every interval would be 10,000 reports/s from 100,000 nodes."""


def wg_key_proof(shared_secret: bytes, message: bytes) -> bytes:
    """The proof a re-authenticating node holds its WireGuard private key: HMAC-SHA256 keyed with the
    X25519 secret it shares with the controller's reauth key, over reauth_message."""
    return hmac.new(shared_secret, message, hashlib.sha256).digest()


def reauth_message(token: str, wg_public_key: bytes, csr_pem: str) -> bytes:
    """What a node whose certificate expired signs with that certificate's key to re-authenticate:
    binds the proof to this request's token, WireGuard key and new CSR (replaying it gains nothing)."""
    return b"\0".join([b"cvlan-reauth-v1", token.encode(), wg_public_key, csr_pem.encode()])


M = TypeVar("M", bound=Message)


class WireError(ValueError):
    """A body that cannot be decoded into the expected message."""


def decode(cls: type[M], body: bytes, content_type: str = CT_PROTO) -> M:
    """Parse a request or response body (protobuf binary, or protobuf JSON for debugging)."""
    msg = cls()
    if content_type == CT_JSON:
        try:
            json_format.Parse(body.decode("utf-8"), msg, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError) as e:
            raise WireError(f"{cls.__name__}: body is not valid protobuf JSON: {_first_line(e)}") from e
        return msg
    try:
        msg.ParseFromString(body)
    except (DecodeError, RecursionError) as e:
        raise WireError(f"{cls.__name__}: body is not a valid protobuf message") from e
    return msg


def encode(msg: Message, content_type: str = CT_PROTO) -> bytes:
    if content_type == CT_JSON:
        return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=None).encode()
    return msg.SerializeToString()


def register_request(
    token: str,
    wg_public_key: bytes,
    csr_pem: str,
    hostname: str = "",
    os_info: str = "",
    route_advert: pb.RouteAdvert | None = None,
) -> pb.RegisterRequest:
    """A node's registration with an enrollment token, as cvlan-ctrl and the benchmarks send it (a
    re-authentication adds the previous certificate and the proofs)."""
    req = pb.RegisterRequest(
        capability_version=CAPABILITY_VERSION,
        token=token,
        wg_public_key=wg_public_key,
        csr_pem=csr_pem,
        hostname=hostname,
        os_info=os_info,
    )
    if route_advert is not None:
        req.route_advert.CopyFrom(route_advert)
    return req


def poll_request(
    map_version: int,
    endpoints: list[str] | None = None,
    health: pb.HealthSummary | None = None,
    home_relay_region: str = "",
    long_poll_s: int = 0,
    route_advert: pb.RouteAdvert | None = None,
) -> pb.PollRequest:
    """A node's poll, as cvlan-ctrl and cvlan-sim send it (route_advert None: unchanged)."""
    req = pb.PollRequest(
        capability_version=CAPABILITY_VERSION,
        map_version=map_version,
        endpoints=endpoints or [],
        home_relay_region=home_relay_region,
        long_poll_s=long_poll_s,
    )
    if health is not None:
        req.health.CopyFrom(health)
    if route_advert is not None:
        req.route_advert.CopyFrom(route_advert)
    return req


def renew_request(csr_pem: str) -> pb.RenewRequest:
    return pb.RenewRequest(capability_version=CAPABILITY_VERSION, csr_pem=csr_pem)


def check_capver(v: int) -> str | None:
    """None if a peer speaking capability version v is served, else the refusal message."""
    if v == 0:
        return "capability_version is missing (unknown client version)"
    if v < MIN_SUPPORTED_CAPVER:
        return f"capability version {v} is too old; this controller needs at least {MIN_SUPPORTED_CAPVER}"
    return None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def len_field(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): tag, length, payload."""
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def peer_chunk(peer: pb.Peer) -> bytes:
    """One encoded NetworkMap.peers entry. Concatenating encoded NetworkMap fragments merges them
    (protobuf merge semantics: repeated fields append), so a map is assembled from cached chunks."""
    return len_field(pb.NetworkMap.PEERS_FIELD_NUMBER, peer.SerializeToString())


def compose_poll_response(head: pb.PollResponse, map_parts: list[bytes]) -> bytes:
    """Encode head (without map) followed by a NetworkMap made of the given encoded fragments."""
    return head.SerializeToString() + len_field(pb.PollResponse.MAP_FIELD_NUMBER, b"".join(map_parts))


def _first_line(e: BaseException) -> str:
    s = str(e).splitlines()
    return s[0][:200] if s else type(e).__name__
