"""The blocking backend API: :class:`Backend`, :class:`Service`, :class:`Ctx`."""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, TypeVar, Union

from . import _attach
from ._ring import Consumer, Producer, Region, RingCorrupt

# Message kinds and flags (docs/ring-protocol.md §5).
OPEN, MESSAGE, CLOSED = 1, 2, 3
ACCEPT, REJECT, SEND, CLOSE, JOIN, LEAVE, PUBLISH, HEARTBEAT, DONE = range(16, 25)
BINARY, IN_REPLY_TO = 1, 2
_U64 = struct.Struct("<Q")

T = TypeVar("T")


class GatewayGone(Exception):
    """The gateway closed the attach socket (it exited)."""


class ProtocolError(Exception):
    """A record from the gateway could not be decoded."""


def group_id(name: Union[str, bytes]) -> int:
    """Group id of a name: FNV-1a 64, the same in every SDK."""
    h = 0xCBF29CE484222325
    for b in name.encode() if isinstance(name, str) else name:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True)
class Accept:
    """Verdict: complete the upgrade, optionally confirming an offered subprotocol."""

    subprotocol: Optional[str] = None


@dataclass(frozen=True)
class Reject:
    """Verdict: refuse with an HTTP status (e.g. 401, 403)."""

    status: int


Verdict = Union[Accept, Reject]


@dataclass(frozen=True)
class OpenRequest:
    """A new connection's upgrade request."""

    protocol: int  # 0 WebSocket, 1 media, 2 live
    peer: Optional[Tuple[str, int]]  # (address, port), None if unknown
    path: str
    query: str
    headers: List[Tuple[str, bytes]] = field(default_factory=list)  # names in lower case

    def header(self, name: str) -> Optional[bytes]:
        """First forwarded header with this name (case-insensitive)."""
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    def query_param(self, name: str) -> Optional[str]:
        """Value of a query parameter (no percent-decoding)."""
        for kv in self.query.split("&"):
            k, _, v = kv.partition("=")
            if k == name:
                return v
        return None


@dataclass(frozen=True)
class Deferred:
    """A request put off with :meth:`Ctx.defer`."""

    conn: int
    seq: int


def _lp(b: bytes, at: int) -> Tuple[bytes, int]:
    if at + 2 > len(b):
        raise ProtocolError("truncated length-prefixed field")
    (n,) = struct.unpack_from("<H", b, at)
    if at + 2 + n > len(b):
        raise ProtocolError("truncated length-prefixed field")
    return b[at + 2 : at + 2 + n], at + 2 + n


def decode_open(p: bytes) -> OpenRequest:
    if len(p) < 20:
        raise ProtocolError("short Open")
    family, protocol, port = struct.unpack_from("<BBH", p, 0)
    if protocol > 2 or family not in (0, 4, 6):
        raise ProtocolError("bad Open family/protocol")
    peer: Optional[Tuple[str, int]] = None
    if family == 4:
        peer = (str(ipaddress.IPv4Address(p[4:8])), port)
    elif family == 6:
        peer = (str(ipaddress.IPv6Address(p[4:20])), port)
    path, at = _lp(p, 20)
    query, at = _lp(p, at)
    if at + 2 > len(p):
        raise ProtocolError("short Open")
    (count,) = struct.unpack_from("<H", p, at)
    at += 2
    headers = []
    for _ in range(count):
        name, at = _lp(p, at)
        value, at = _lp(p, at)
        headers.append((name.decode("latin-1"), value))
    if at != len(p):
        raise ProtocolError("trailing bytes in Open")
    return OpenRequest(protocol, peer, path.decode("utf-8", "replace"), query.decode("utf-8", "replace"), headers)


class Service:
    """Your business logic: override what you need."""

    def on_open(self, ctx: "Ctx", conn: int, req: OpenRequest) -> Optional[Verdict]:
        """A client wants to connect. Return Accept/Reject (None = accept)."""
        return None

    def on_message(self, ctx: "Ctx", conn: int, data: bytes, binary: bool) -> None:
        """A client message: ctx.reply(), ctx.done() or ctx.defer(); returning without any of
        them completes it with nothing."""

    def on_closed(self, ctx: "Ctx", conn: int, code: int, reason: bytes) -> None:
        """The connection is gone (close code; 1006 if it dropped)."""


class Ctx:
    """What a service can do while handling an event (or in :meth:`Backend.with_ctx`)."""

    def __init__(self, backend: "Backend") -> None:
        self._b = backend
        self._current: Optional[Tuple[int, int, int]] = None  # conn, seq, record position
        self._completed = False

    def _push(self, shard: int, kind: int, flags: int, conn: int, *parts: bytes) -> None:
        if not 0 <= shard < len(self._b._txs):
            return  # not a connection of this gateway
        tx = self._b._txs[shard]
        while not tx.try_push(kind, flags, conn, 0, parts):
            tx.wait_for_space(0.1)  # the gateway drains its ring continuously

    @staticmethod
    def _shard(conn: int) -> int:
        return conn >> 56  # the top byte of a connection id is its shard

    def reply(self, data: Union[bytes, str], binary: bool = False) -> None:
        """Answer the request being handled (delivered in request order; b'' is a message).
        A second answer is sent as a push."""
        if self._current is None:
            return
        conn, seq, _ = self._current
        if self._completed:
            return self.send(conn, data, binary)
        self._completed = True
        payload = data.encode() if isinstance(data, str) else bytes(data)
        flags = IN_REPLY_TO | (BINARY if binary else 0)
        self._push(self._shard(conn), SEND, flags, conn, _U64.pack(seq), payload)

    def done(self) -> None:
        """Complete the request being handled without sending anything."""
        if self._current is None or self._completed:
            return
        conn, seq, _ = self._current
        self._completed = True
        self._push(self._shard(conn), DONE, 0, conn, _U64.pack(seq))

    def defer(self) -> Optional[Deferred]:
        """Put off the request being handled; complete it later with reply_to/done_with.
        Until then the backend does not commit past it (a successor gets it again)."""
        if self._current is None or self._completed:
            return None
        conn, seq, pos = self._current
        self._completed = True
        d = Deferred(conn, seq)
        self._b._held[self._shard(conn)][d] = pos
        return d

    def _release(self, d: Deferred) -> bool:
        held = self._b._held
        s = self._shard(d.conn)
        return s < len(held) and held[s].pop(d, None) is not None

    def reply_to(self, d: Deferred, data: Union[bytes, str], binary: bool = False) -> bool:
        """Answer a deferred request; False if it was already completed."""
        if not self._release(d):
            return False
        payload = data.encode() if isinstance(data, str) else bytes(data)
        flags = IN_REPLY_TO | (BINARY if binary else 0)
        self._push(self._shard(d.conn), SEND, flags, d.conn, _U64.pack(d.seq), payload)
        return True

    def done_with(self, d: Deferred) -> bool:
        """Complete a deferred request without a message; False if already completed."""
        if not self._release(d):
            return False
        self._push(self._shard(d.conn), DONE, 0, d.conn, _U64.pack(d.seq))
        return True

    def send(self, conn: int, data: Union[bytes, str], binary: bool = False) -> None:
        """Push a message to any connection now (outside the reply order)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        self._push(self._shard(conn), SEND, BINARY if binary else 0, conn, payload)

    def close(self, conn: int, code: int = 1000, reason: str = "") -> None:
        """Close a connection with a WebSocket close code."""
        self._push(self._shard(conn), CLOSE, 0, conn, struct.pack("<H", code), reason.encode())

    def join(self, conn: int, group: int) -> None:
        """Add a connection to a group (see :func:`group_id`)."""
        self._push(self._shard(conn), JOIN, 0, conn, _U64.pack(group))

    def leave(self, conn: int, group: int) -> None:
        """Remove a connection from a group."""
        self._push(self._shard(conn), LEAVE, 0, conn, _U64.pack(group))

    def publish(self, group: int, data: Union[bytes, str], binary: bool = False) -> None:
        """Send to every member of a group: one record per shard (each fans out locally)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        for shard in range(len(self._b._txs)):
            self._push(shard, PUBLISH, BINARY if binary else 0, 0, _U64.pack(group), payload)


class Backend:
    """An attached backend: one ring pair per gateway shard."""

    def __init__(self, sock: socket.socket, route: int) -> None:
        self._sock = sock
        self._regions: List[Region] = []
        self._rxs: List[Consumer] = []
        self._txs: List[Producer] = []
        self._fds: List[int] = []
        try:
            for shard, size, fds in _attach.handshake(sock, route):
                self._fds.extend(fds)
                memfd, tb_data, tb_space, tg_data, tg_space = fds
                r = Region(memfd, shard, size)
                self._regions.append(r)
                self._rxs.append(Consumer(r, tb_data, tb_space, 1 << 30))
                self._txs.append(Producer(r, tg_data, tg_space))
        except Exception:
            self.close()
            raise
        self._held: List[Dict[Deferred, int]] = [{} for _ in self._rxs]
        self._heartbeat: Optional[Tuple[int, int]] = None
        self._last_beat = 0.0
        self.spin = 20e-6
        sock.setblocking(False)

    @classmethod
    def attach(cls, path: str, route: int = 0, retry: float = 0.0) -> "Backend":
        """Attach to the gateway's socket, retrying for `retry` seconds while it starts."""
        deadline = time.monotonic() + retry
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.settimeout(10)
                s.connect(path)
                return cls(s, route)
            except (OSError, _attach.AttachError):
                s.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    @classmethod
    def attach_env(cls, retry: float = 10.0) -> "Backend":
        """Attach as CORELAY_ATTACH / CORELAY_ROUTE / CORELAY_HEARTBEAT_MS say."""
        path = os.environ.get("CORELAY_ATTACH")
        if not path:
            raise ValueError("CORELAY_ATTACH is not set")
        b = cls.attach(path, int(os.environ.get("CORELAY_ROUTE") or 0), retry)
        ms = os.environ.get("CORELAY_HEARTBEAT_MS")
        if ms:
            b.set_heartbeat(int(ms) / 1000, 3 * int(ms) / 1000)
        return b

    @property
    def shards(self) -> int:
        return len(self._rxs)

    def set_heartbeat(self, interval: float, timeout: float) -> None:
        """Announce a liveness policy; run() beats every `interval` seconds."""
        self._heartbeat = (max(1, int(interval * 1000)), max(1, int(timeout * 1000)))

    def send_heartbeat(self) -> None:
        """One Heartbeat record per shard now (run() does this itself)."""
        if self._heartbeat is None:
            return
        self._last_beat = time.monotonic()
        ctx = Ctx(self)
        for shard in range(len(self._txs)):
            ctx._push(shard, HEARTBEAT, 0, 0, struct.pack("<II", *self._heartbeat))
        self._flush_and_commit()

    def heartbeat_due(self) -> Optional[float]:
        """Seconds until the next heartbeat is due (None without a policy)."""
        if self._heartbeat is None:
            return None
        return max(0.0, self._last_beat + self._heartbeat[0] / 1000 - time.monotonic())

    def wake_fds(self) -> List[int]:
        """Readable fds for an event loop: each shard's data bell, then the attach socket."""
        return [rx.data_bell for rx in self._rxs] + [self._sock.fileno()]

    def gateway_alive(self) -> bool:
        try:
            return self._sock.recv(16, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _dispatch(self, service: Service, ctx: Ctx, rec: Tuple[int, int, int, int, bytes, int, int]) -> None:
        kind, flags, conn, seq, payload, pos, _ = rec
        if kind == MESSAGE and flags & ~BINARY == 0:
            ctx._current = (conn, seq, pos)
            ctx._completed = False
            service.on_message(ctx, conn, payload, bool(flags & BINARY))
            ctx.done()  # every request is completed exactly once
            ctx._current = None
        elif kind == OPEN and flags == 0:
            v = service.on_open(ctx, conn, decode_open(payload))
            if isinstance(v, Reject):
                ctx._push(ctx._shard(conn), REJECT, 0, conn, struct.pack("<H", v.status))
            else:
                sub = (v.subprotocol or "").encode() if isinstance(v, Accept) else b""
                ctx._push(ctx._shard(conn), ACCEPT, 0, conn, sub)
        elif kind == CLOSED and flags == 0 and len(payload) >= 2:
            (code,) = struct.unpack_from("<H", payload)
            service.on_closed(ctx, conn, code, payload[2:])
        else:
            raise ProtocolError(f"undecodable record kind {kind} flags {flags}")

    def _poll_once(self, service: Service) -> int:
        handled = 0
        ctx = Ctx(self)
        for rx in self._rxs:
            rx.unpark()
            for _ in range(1024):
                rec = rx.peek()
                if rec is None:
                    break
                try:
                    self._dispatch(service, ctx, rec)
                except ProtocolError:
                    pass  # the gateway is trusted; a record it did not mean is skipped
                rx.advance(rec[6])
                handled += 1
        self._flush_and_commit()
        return handled

    def _flush_and_commit(self) -> None:
        # Replies first, then commit (a crash in between re-delivers, never loses).
        for tx in self._txs:
            tx.flush()
        for rx, held in zip(self._rxs, self._held):
            oldest = min(held.values(), default=None)
            if oldest is None:
                rx.commit_to(rx.head)
            elif oldest > rx.committed:
                rx.commit_to(oldest)

    def poll(self, service: Service) -> int:
        """Handle what is there without blocking. 0 = all rings empty and parked: wait for a
        wake fd. >0: call again."""
        while True:
            n = self._poll_once(service)
            if n:
                return n
            for i, rx in enumerate(self._rxs):
                if not rx.park():
                    for r in self._rxs[:i]:
                        r.unpark()
                    break
            else:
                return 0

    def with_ctx(self, f: Callable[[Ctx], T]) -> T:
        """Act outside a callback (complete deferred requests, push, publish)."""
        r = f(Ctx(self))
        self._flush_and_commit()
        return r

    def run(self, service: Service) -> None:
        """Serve until the gateway goes away (raises GatewayGone)."""
        p = select.poll()
        for fd in self.wake_fds():
            p.register(fd, select.POLLIN)
        sock_fd = self._sock.fileno()
        idle_since: Optional[float] = None
        while True:
            due = self.heartbeat_due()
            if due is not None and due <= 0:
                self.send_heartbeat()
            if self._poll_once(service):
                idle_since = None
                continue
            now = time.monotonic()
            if idle_since is None:
                idle_since = now
            if now - idle_since < self.spin:
                continue
            idle_since = None
            if self.poll(service):
                continue
            due = self.heartbeat_due()
            timeout = 1000 if due is None else max(1, min(1000, int(due * 1000) + 1))
            for fd, _ in p.poll(timeout):
                if fd == sock_fd and not self.gateway_alive():
                    raise GatewayGone()

    def close(self) -> None:
        """Detach: the gateway hands this backend's slot to a successor."""
        try:
            self._sock.close()
        finally:
            for r in self._regions:
                r.close()
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds = []

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "Accept",
    "Backend",
    "Ctx",
    "Deferred",
    "GatewayGone",
    "OpenRequest",
    "ProtocolError",
    "Reject",
    "RingCorrupt",
    "Service",
    "Verdict",
    "group_id",
]
