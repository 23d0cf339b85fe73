"""Reach into a network namespace from the root namespace without adding any address or route there.

setns(CLONE_NEWNET) changes only the calling thread, and a socket keeps the namespace it was
created in; so a short-lived thread enters the namespace, creates the socket and leaves."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in_netns(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in network namespace ns (by name, /run/netns/NAME)."""
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
                try:
                    _setns(target)
                    try:
                        result.append(socket.socket(family, kind))
                    finally:
                        _setns(own)
                finally:
                    os.close(target)
            finally:
                os.close(own)
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=work, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join(timeout=10)
    if not result:
        raise TimeoutError(f"entering namespace {ns} timed out")
    r = result[0]
    if isinstance(r, BaseException):
        raise r
    return r


class TcpForwarder:
    """Listens on a root-namespace address and forwards each TCP connection to host:port inside ns."""

    def __init__(self, listen: tuple[str, int], ns: str, target: tuple[str, int]) -> None:
        self.ns = ns
        self.target = target
        self._srv = socket.create_server(listen, reuse_port=False)
        self.address: tuple[str, int] = self._srv.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="forwarder", daemon=True)

    def start(self) -> TcpForwarder:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        self._srv.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._bridge, args=(conn,), daemon=True).start()

    def _bridge(self, conn: socket.socket) -> None:
        try:
            up = socket_in_netns(self.ns)
            up.settimeout(10)
            up.connect(self.target)
            up.settimeout(None)
        except OSError:
            conn.close()
            return
        conn.settimeout(None)
        t = threading.Thread(target=_pump, args=(up, conn), daemon=True)
        t.start()
        _pump(conn, up)
        t.join(timeout=5)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._srv.close()
        self._thread.join(timeout=2)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            src.close()
