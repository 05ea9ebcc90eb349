"""The same API as :mod:`corelay_backend.backend`, over the C ABI (``libcorelay_backend.so``,
sdk/c) with ctypes: the rings are read and written by the Rust library, Python sees only the
callbacks. Chosen with ``CORELAY_PY_IMPL=c``; the library is ``CORELAY_BACKEND_LIB`` (a path)
or found on the loader's path as ``corelay_backend``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import os
import select
import socket
import time
from typing import Callable, List, Optional, Tuple, TypeVar, Union

from .backend import Accept, Deferred, GatewayGone, OpenRequest, Reject, Service

T = TypeVar("T")

_u8p = ctypes.POINTER(ctypes.c_uint8)


class _OpenRequest(ctypes.Structure):
    _fields_ = [
        ("protocol", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("addr", ctypes.c_uint8 * 16),
        ("path", _u8p),
        ("path_len", ctypes.c_size_t),
        ("query", _u8p),
        ("query_len", ctypes.c_size_t),
        ("header_count", ctypes.c_size_t),
        ("headers", ctypes.c_void_p),
    ]


class _Deferred(ctypes.Structure):
    _fields_ = [("conn", ctypes.c_uint64), ("seq", ctypes.c_uint64)]


_ON_OPEN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(_OpenRequest))
_ON_MESSAGE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_ON_CLOSED = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint16, ctypes.c_void_p, ctypes.c_size_t)
_WITH_CTX = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class _Callbacks(ctypes.Structure):
    _fields_ = [("user", ctypes.c_void_p), ("on_open", _ON_OPEN), ("on_message", _ON_MESSAGE), ("on_closed", _ON_CLOSED)]


class CError(Exception):
    """A call into the C library failed (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (status {status})")
        self.status = status


_GATEWAY_GONE = -3
_lib: Optional[ctypes.CDLL] = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    path = os.environ.get("CORELAY_BACKEND_LIB") or ctypes.util.find_library("corelay_backend")
    if not path:
        raise OSError("libcorelay_backend.so not found: set CORELAY_BACKEND_LIB to its path")
    lib = ctypes.CDLL(path)
    vp, sz, c_int, u16, u32, u64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
    sigs = {
        "corelay_last_error": (ctypes.c_char_p, []),
        "corelay_attach": (c_int, [ctypes.c_char_p, u32, ctypes.POINTER(vp)]),
        "corelay_attach_env": (c_int, [u32, ctypes.POINTER(vp)]),
        "corelay_backend_free": (None, [vp]),
        "corelay_shards": (sz, [vp]),
        "corelay_set_heartbeat": (c_int, [vp, u32, u32]),
        "corelay_send_heartbeat": (c_int, [vp]),
        "corelay_wake_fds": (sz, [vp, ctypes.POINTER(c_int), sz]),
        "corelay_poll": (c_int, [vp, ctypes.POINTER(_Callbacks), ctypes.POINTER(sz)]),
        "corelay_with_ctx": (c_int, [vp, _WITH_CTX, vp]),
        "corelay_open_header": (c_int, [ctypes.POINTER(_OpenRequest), sz, ctypes.POINTER(_u8p), ctypes.POINTER(sz), ctypes.POINTER(_u8p), ctypes.POINTER(sz)]),
        "corelay_accept": (None, [vp, ctypes.c_char_p, sz]),
        "corelay_reject": (None, [vp, u16]),
        "corelay_reply": (None, [vp, c_int, ctypes.c_char_p, sz]),
        "corelay_done": (None, [vp]),
        "corelay_defer": (c_int, [vp, ctypes.POINTER(_Deferred)]),
        "corelay_reply_to": (c_int, [vp, _Deferred, c_int, ctypes.c_char_p, sz]),
        "corelay_done_with": (c_int, [vp, _Deferred]),
        "corelay_send": (None, [vp, u64, c_int, ctypes.c_char_p, sz]),
        "corelay_close": (None, [vp, u64, u16, ctypes.c_char_p, sz]),
        "corelay_join": (None, [vp, u64, u64]),
        "corelay_leave": (None, [vp, u64, u64]),
        "corelay_publish": (None, [vp, u64, c_int, ctypes.c_char_p, sz]),
        "corelay_group_id": (u64, [ctypes.c_char_p, sz]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    _lib = lib
    return lib


def _check(status: int) -> None:
    if status != 0:
        msg = (_load().corelay_last_error() or b"").decode("utf-8", "replace")
        if status == _GATEWAY_GONE:
            raise GatewayGone(msg)
        raise CError(status, msg)


def _bytes(data: Union[bytes, str]) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


class Ctx:
    """:class:`corelay_backend.Ctx` over a ``corelay_ctx`` (valid during the callback)."""

    __slots__ = ("_c", "_lib")

    def __init__(self, lib: ctypes.CDLL, c: Optional[int]) -> None:
        self._lib = lib
        self._c = c

    def reply(self, data: Union[bytes, str], binary: bool = False) -> None:
        b = _bytes(data)
        self._lib.corelay_reply(self._c, 1 if binary else 0, b, len(b))

    def done(self) -> None:
        self._lib.corelay_done(self._c)

    def defer(self) -> Optional[Deferred]:
        d = _Deferred()
        if self._lib.corelay_defer(self._c, ctypes.byref(d)) != 0:
            return None
        return Deferred(d.conn, d.seq)

    def reply_to(self, d: Deferred, data: Union[bytes, str], binary: bool = False) -> bool:
        b = _bytes(data)
        return self._lib.corelay_reply_to(self._c, _Deferred(d.conn, d.seq), 1 if binary else 0, b, len(b)) == 0

    def done_with(self, d: Deferred) -> bool:
        return self._lib.corelay_done_with(self._c, _Deferred(d.conn, d.seq)) == 0

    def send(self, conn: int, data: Union[bytes, str], binary: bool = False) -> None:
        b = _bytes(data)
        self._lib.corelay_send(self._c, conn, 1 if binary else 0, b, len(b))

    def close(self, conn: int, code: int = 1000, reason: str = "") -> None:
        r = reason.encode()
        self._lib.corelay_close(self._c, conn, code, r, len(r))

    def join(self, conn: int, group: int) -> None:
        self._lib.corelay_join(self._c, conn, group)

    def leave(self, conn: int, group: int) -> None:
        self._lib.corelay_leave(self._c, conn, group)

    def publish(self, group: int, data: Union[bytes, str], binary: bool = False) -> None:
        b = _bytes(data)
        self._lib.corelay_publish(self._c, group, 1 if binary else 0, b, len(b))


def _open_request(lib: ctypes.CDLL, rp: "ctypes._Pointer[_OpenRequest]") -> OpenRequest:
    r = rp.contents
    peer: Optional[Tuple[str, int]] = None
    if r.family == 4:
        peer = (str(ipaddress.IPv4Address(bytes(r.addr[:4]))), r.port)
    elif r.family == 6:
        peer = (str(ipaddress.IPv6Address(bytes(r.addr))), r.port)
    headers: List[Tuple[str, bytes]] = []
    name, value = _u8p(), _u8p()
    nl, vl = ctypes.c_size_t(), ctypes.c_size_t()
    for i in range(r.header_count):
        if lib.corelay_open_header(rp, i, ctypes.byref(name), ctypes.byref(nl), ctypes.byref(value), ctypes.byref(vl)) != 0:
            break
        headers.append((ctypes.string_at(name, nl.value).decode("latin-1"), ctypes.string_at(value, vl.value)))
    path = ctypes.string_at(r.path, r.path_len) if r.path_len else b""
    query = ctypes.string_at(r.query, r.query_len) if r.query_len else b""
    return OpenRequest(r.protocol, peer, path.decode("utf-8", "replace"), query.decode("utf-8", "replace"), headers)


class _Dispatch:
    """The three C callbacks for one service. An exception in the service is kept and raised
    by poll()/run() once the library returns (it cannot unwind through the C frames)."""

    def __init__(self, lib: ctypes.CDLL, service: Service) -> None:
        self.error: Optional[BaseException] = None
        ctx = Ctx(lib, None)

        def on_open(_u: int, c: int, conn: int, rp: "ctypes._Pointer[_OpenRequest]") -> None:
            ctx._c = c
            try:
                v = service.on_open(ctx, conn, _open_request(lib, rp))
            except BaseException as e:  # noqa: BLE001 - re-raised by poll()/run()
                self.error = self.error or e
                v = Reject(500)
            if isinstance(v, Reject):
                lib.corelay_reject(c, v.status)
            else:
                sub = (v.subprotocol or "").encode() if isinstance(v, Accept) else b""
                lib.corelay_accept(c, sub, len(sub))

        def on_message(_u: int, c: int, conn: int, binary: int, data: int, n: int) -> None:
            ctx._c = c
            try:
                service.on_message(ctx, conn, ctypes.string_at(data, n) if n else b"", bool(binary))
            except BaseException as e:  # noqa: BLE001
                self.error = self.error or e

        def on_closed(_u: int, c: int, conn: int, code: int, reason: int, n: int) -> None:
            ctx._c = c
            try:
                service.on_closed(ctx, conn, code, ctypes.string_at(reason, n) if n else b"")
            except BaseException as e:  # noqa: BLE001
                self.error = self.error or e

        # ctypes keeps the trampolines alive only while these objects are referenced.
        self.cbs = _Callbacks(None, _ON_OPEN(on_open), _ON_MESSAGE(on_message), _ON_CLOSED(on_closed))

    def raise_error(self) -> None:
        if self.error is not None:
            e, self.error = self.error, None
            raise e


class Backend:
    """:class:`corelay_backend.Backend` over the C library."""

    def __init__(self, handle: int, heartbeat: Optional[Tuple[int, int]] = None) -> None:
        self._lib = _load()
        self._h: Optional[int] = handle
        self._heartbeat = heartbeat
        self._last_beat = 0.0
        self._dispatch: Optional[Tuple[Service, _Dispatch]] = None
        n = self._lib.corelay_wake_fds(handle, None, 0)
        arr = (ctypes.c_int * n)()
        self._lib.corelay_wake_fds(handle, arr, n)
        self._fds = list(arr)
        # The attach socket, duplicated: peeking at it tells whether the gateway is gone.
        self._sock = socket.fromfd(self._fds[-1], socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.setblocking(False)
        self.spin = 20e-6

    @classmethod
    def attach(cls, path: str, route: int = 0, retry: float = 0.0) -> "Backend":
        lib = _load()
        deadline = time.monotonic() + retry
        while True:
            h = ctypes.c_void_p()
            st = lib.corelay_attach(os.fsencode(path), route, ctypes.byref(h))
            if st == 0:
                return cls(h.value)  # type: ignore[arg-type]
            if time.monotonic() >= deadline:
                _check(st)
            time.sleep(0.05)

    @classmethod
    def attach_env(cls, retry: float = 10.0) -> "Backend":
        lib = _load()
        h = ctypes.c_void_p()
        _check(lib.corelay_attach_env(int(retry * 1000), ctypes.byref(h)))
        ms = os.environ.get("CORELAY_HEARTBEAT_MS")
        # The library took the policy from the environment; remember it for heartbeat_due().
        return cls(h.value, (int(ms), 3 * int(ms)) if ms else None)  # type: ignore[arg-type]

    def _handle(self) -> int:
        if self._h is None:
            raise ValueError("backend is closed")
        return self._h

    @property
    def shards(self) -> int:
        return int(self._lib.corelay_shards(self._handle()))

    def set_heartbeat(self, interval: float, timeout: float) -> None:
        hb = (max(1, int(interval * 1000)), max(1, int(timeout * 1000)))
        _check(self._lib.corelay_set_heartbeat(self._handle(), *hb))
        self._heartbeat = hb

    def send_heartbeat(self) -> None:
        if self._heartbeat is None:
            return
        self._last_beat = time.monotonic()
        _check(self._lib.corelay_send_heartbeat(self._handle()))

    def heartbeat_due(self) -> Optional[float]:
        if self._heartbeat is None:
            return None
        return max(0.0, self._last_beat + self._heartbeat[0] / 1000 - time.monotonic())

    def wake_fds(self) -> List[int]:
        return list(self._fds)

    def gateway_alive(self) -> bool:
        try:
            return self._sock.recv(16, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _callbacks(self, service: Service) -> _Dispatch:
        # One set of trampolines per service, built once (poll is called per batch).
        if self._dispatch is None or self._dispatch[0] is not service:
            self._dispatch = (service, _Dispatch(self._lib, service))
        return self._dispatch[1]

    def poll(self, service: Service) -> int:
        d = self._callbacks(service)
        n = ctypes.c_size_t()
        st = self._lib.corelay_poll(self._handle(), ctypes.byref(d.cbs), ctypes.byref(n))
        d.raise_error()
        _check(st)
        return n.value

    def with_ctx(self, f: Callable[[Ctx], T]) -> T:
        out: List[T] = []
        err: List[BaseException] = []

        def cb(_u: int, c: int) -> None:
            try:
                out.append(f(Ctx(self._lib, c)))
            except BaseException as e:  # noqa: BLE001 - re-raised below
                err.append(e)

        _check(self._lib.corelay_with_ctx(self._handle(), _WITH_CTX(cb), None))
        if err:
            raise err[0]
        return out[0]

    def run(self, service: Service) -> None:
        """Serve until the gateway goes away (raises GatewayGone); the loop of the pure
        backend's run(), each batch handled by the library."""
        p = select.poll()
        for fd in self._fds:
            p.register(fd, select.POLLIN)
        sock_fd = self._fds[-1]
        while True:
            due = self.heartbeat_due()
            if due is not None and due <= 0:
                self.send_heartbeat()
            if self.poll(service):
                continue
            # 0: every ring empty and parked; the gateway rings a data fd on its next record.
            due = self.heartbeat_due()
            timeout = 1000 if due is None else max(1, min(1000, int(due * 1000) + 1))
            for fd, _ in p.poll(timeout):
                if fd == sock_fd and not self.gateway_alive():
                    raise GatewayGone()

    def close(self) -> None:
        if self._h is not None:
            self._sock.close()
            self._lib.corelay_backend_free(self._h)
            self._h = None

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def group_id(name: Union[str, bytes]) -> int:
    """Group id of a name, computed by the library (FNV-1a 64)."""
    b = _bytes(name)
    return int(_load().corelay_group_id(b, len(b)))
