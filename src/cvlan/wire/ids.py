"""Typed identifiers shared by every component (no bare ints for domain concepts)."""

from __future__ import annotations

from typing import NewType

TenantId = NewType("TenantId", int)
CvlanId = NewType("CvlanId", int)
NodeId = NewType("NodeId", int)
VrouterId = NewType("VrouterId", int)
MapVersion = NewType("MapVersion", int)
"""Opaque per-node map version: equal versions mean identical maps; 0 means "none held"."""
