"""The attach handshake (docs/ring-protocol.md §6)."""

from __future__ import annotations

import array
import socket
import struct
from typing import List, Tuple

ATTACH_MAGIC = b"CRLYATT1"
VERSION = 2
STATUS = {1: "denied (uid not allowed)", 2: "bad version", 3: "bad hello"}


class AttachError(Exception):
    """The gateway refused us or the handshake broke."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AttachError("the gateway closed the attach socket during the handshake")
        buf += chunk
    return buf


def handshake(sock: socket.socket, route: int) -> List[Tuple[int, int, List[int]]]:
    """Runs the handshake; returns (shard, region_size, 5 fds) per shard, sorted by shard."""
    sock.sendall(ATTACH_MAGIC + struct.pack("<II", VERSION, route))
    magic, version, status, n_shards, _ = struct.unpack("<8sIIII", _recv_exact(sock, 24))
    if magic != ATTACH_MAGIC:
        raise AttachError("bad server hello magic")
    if status != 0:
        raise AttachError(
            f"gateway refused the attach: status {status} ({STATUS.get(status, '?')}), "
            f"gateway version {version}, ours {VERSION}"
        )
    if not 1 <= n_shards <= 4096:
        raise AttachError(f"implausible shard count {n_shards}")
    shards = []
    fd_size = array.array("i").itemsize
    for _ in range(n_shards):
        # socket.recv_fds() would drop MSG_CMSG_CLOEXEC on Python 3.11: use recvmsg.
        data, anc, flags, _addr = sock.recvmsg(
            24, socket.CMSG_SPACE(5 * fd_size), socket.MSG_CMSG_CLOEXEC
        )
        fds: List[int] = []
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % fd_size])
                fds.extend(a)
        if not data:
            raise AttachError("the gateway closed the attach socket during the handshake")
        if flags & socket.MSG_CTRUNC or len(fds) != 5:
            for fd in fds:
                _close(fd)
            raise AttachError(f"expected 5 file descriptors with the shard record, got {len(fds)}")
        if len(data) < 24:
            data += _recv_exact(sock, 24 - len(data))
        shard, n_fds, region_size, _ = struct.unpack("<IIQQ", data)
        if n_fds != 5:
            raise AttachError(f"shard record says {n_fds} fds")
        shards.append((shard, region_size, fds))
    shards.sort(key=lambda s: s[0])
    if [s[0] for s in shards] != list(range(n_shards)):
        raise AttachError("shards are not numbered 0..n")
    return shards


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
