"""Per-CVLAN peer maps (versioned, cached, pre-encoded) and the buffered liveness writer."""

from cvlan.controller.mapper.cache import CvlanMap, Mapper, Member
from cvlan.controller.mapper.liveness import LivenessBuffer

__all__ = ["CvlanMap", "LivenessBuffer", "Mapper", "Member"]
