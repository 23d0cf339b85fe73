"""Keys and CSRs of each supported type; other types refused."""

from __future__ import annotations

import pytest

from cvlan.common import pki
from cvlan.controller.ops.registration import load_csr


def test_csrs_for_each_key_type_verify_and_other_types_are_refused() -> None:
    for kind in ("p256", "ed25519"):
        _, pem = pki.new_csr("node", kind)
        assert load_csr(pem).is_signature_valid  # what the controller accepts
    with pytest.raises(ValueError, match="expected p256 or ed25519"):
        pki.new_key("rsa")  # type: ignore[arg-type]
