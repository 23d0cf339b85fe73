"""The ids of the objects every part of CVLAN names: a tenant, a CVLAN, a node. Plain integers on
the wire (the node certificate, the node protocol, the API) and in the database; typed inside, so that
a node id cannot be passed where a CVLAN id is meant (STYLE C3). Make one at the boundary where an id
is read (``NodeId(int(text))``); the ORM columns already give them typed."""

from __future__ import annotations

from typing import NewType

__all__ = ["CvlanId", "NodeId", "TenantId"]

TenantId = NewType("TenantId", int)
CvlanId = NewType("CvlanId", int)
NodeId = NewType("NodeId", int)
