"""Unix socket liveness (common.files.socket_in_use): a listener, a file left by a dead process and
no file at all. Under 0.1 s."""

from __future__ import annotations

import socket
from pathlib import Path

from cvlan.common.files import socket_in_use


def test_only_a_socket_with_a_listener_is_in_use(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    assert not socket_in_use(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen(1)
        assert socket_in_use(path)
    assert path.exists() and not socket_in_use(path)  # the file is left, nobody listens
