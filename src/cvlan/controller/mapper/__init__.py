"""Per-CVLAN peer maps (versioned, cached, pre-encoded), the buffered liveness writer, and the
fan-out of map changes between controller processes."""

from cvlan.controller.mapper.cache import CvlanMap, Mapper, Member
from cvlan.controller.mapper.fanout import Fanout
from cvlan.controller.mapper.liveness import LivenessBuffer

__all__ = ["CvlanMap", "Fanout", "LivenessBuffer", "Mapper", "Member"]
