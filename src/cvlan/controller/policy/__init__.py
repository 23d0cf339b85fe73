"""CVLAN packet-filter policy: the document users write, and its compilation per receiving node."""

from cvlan.controller.policy.compile import CompiledRule, MemberRef, compile_for_members
from cvlan.controller.policy.document import PolicyDocument, PolicyRule, content_hash, parse_document

__all__ = [
    "CompiledRule",
    "MemberRef",
    "PolicyDocument",
    "PolicyRule",
    "compile_for_members",
    "content_hash",
    "parse_document",
]
