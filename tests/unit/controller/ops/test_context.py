"""Names of tenants, CVLANs and the like: safe labels only."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from cvlan.controller.errors import DomainError
from cvlan.controller.ops.context import check_name


@given(st.text(max_size=80))
@example("0\n")
@example("acme\n")
def test_names_accept_only_safe_labels(name: str) -> None:
    try:
        check_name("x", name)
    except DomainError as e:
        assert e.kind.value == "invalid" and "is not valid" in e.message
        return
    assert 1 <= len(name) <= 63 and name.isascii() and name.isprintable() and not name.isdigit()
    assert " " not in name and "/" not in name
