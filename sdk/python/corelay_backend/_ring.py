"""Region mapping and the two ring ends (docs/ring-protocol.md §2-§4), in pure Python.

The peer (the gateway) is trusted less than ourselves: every shared value is read once into
a local and validated before use; a violation raises :class:`RingCorrupt`.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import struct
from typing import Optional, Tuple

from ._atomic import address_of, xchg32, xchg64

MAGIC = b"CORELAY1"
REGION_HEADER = 128
RING_HEADER = 384
HDR = struct.Struct("<IHHQQ")  # len, kind, flags, conn, seq
PAD = 0
# Ring header field offsets (from the ring header's start).
TAIL, SPACE_PARKED, HEAD, COMMITTED, DATA_PARKED = 128, 136, 256, 264, 272


class RingCorrupt(Exception):
    """The peer broke the protocol: stop using the region."""


def _round8(n: int) -> int:
    return (n + 7) & ~7


def record_size(length: int) -> int:
    return _round8(24 + length)


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


class Region:
    """A validated shared-memory region (one per gateway shard)."""

    def __init__(self, memfd: int, shard: int, region_size: int) -> None:
        size = os.fstat(memfd).st_size
        seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            raise RingCorrupt("memfd is not sealed against shrinking")
        if size != region_size or size < REGION_HEADER:
            raise RingCorrupt(f"memfd size {size} != announced {region_size}")
        self.mm = mmap.mmap(memfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.base = address_of(self.mm)
        h = bytes(self.mm[0:REGION_HEADER])
        magic, version, hsize, rsize, rshard, _flags, tbo, tbc, tgo, tgc = struct.unpack_from(
            "<8sIIQIIQQQQ", h
        )
        if magic != MAGIC or version != 1 or hsize != REGION_HEADER:
            raise RingCorrupt("bad region header (magic/version/size)")
        for cap in (tbc, tgc):
            if cap < 1024 or cap > 1 << 30 or cap & (cap - 1):
                raise RingCorrupt(f"bad ring capacity {cap}")
        canonical = (896 + tbc + tgc + 4095) // 4096 * 4096
        if rsize != size or rshard != shard or tbo != 128 or tgo != 512 + tbc or rsize != canonical:
            raise RingCorrupt("region layout is not canonical")
        for ring, cap in ((tbo, tbc), (tgo, tgc)):
            rcap, doff = struct.unpack_from("<QQ", self.mm, ring)
            if rcap != cap or doff != RING_HEADER:
                raise RingCorrupt("ring header does not match the region header")
        self.to_backend = (tbo, tbc)
        self.to_gateway = (tgo, tgc)

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            pass  # the atomics' address export pins it; it goes with the process


class _Ring:
    def __init__(self, region: Region, at: Tuple[int, int]) -> None:
        off, cap = at
        self.mm = region.mm
        self.cap = cap
        self.mask = cap - 1
        self.data = off + RING_HEADER
        self.q = memoryview(region.mm).cast("Q")
        self.i = memoryview(region.mm).cast("I")
        self.a_tail = region.base + off + TAIL
        self.a_committed = region.base + off + COMMITTED
        self.a_space_parked = region.base + off + SPACE_PARKED
        self.a_data_parked = region.base + off + DATA_PARKED
        self.x_tail = (off + TAIL) // 8
        self.x_head = (off + HEAD) // 8
        self.x_committed = (off + COMMITTED) // 8
        self.x_space_parked = (off + SPACE_PARKED) // 4
        self.x_data_parked = (off + DATA_PARKED) // 4

    def check_positions(self) -> Tuple[int, int]:
        t, c = self.q[self.x_tail], self.q[self.x_committed]
        if t % 8 or c % 8 or c > t or t - c > self.cap:
            raise RingCorrupt(f"ring positions inconsistent: tail {t}, committed {c}")
        return t, c


class Consumer(_Ring):
    """Reads ``to_backend``: starts at the shared ``committed`` (§7)."""

    def __init__(self, region: Region, data_bell: int, space_bell: int, max_payload: int) -> None:
        super().__init__(region, region.to_backend)
        t, c = self.check_positions()
        self.head = c
        self.tail = t
        self.committed = c
        self.data_bell = data_bell
        self.space_bell = space_bell
        self.max_payload = min(max_payload, self.cap - 24)
        self.parked = False
        self.bell_dirty = False
        self.q[self.x_head] = c

    def _reload_tail(self) -> int:
        t = self.q[self.x_tail]
        if t % 8 or t < self.tail or t < self.head or t - self.committed > self.cap:
            raise RingCorrupt(f"tail out of range: {t} (head {self.head})")
        self.tail = t
        return t

    def peek(self) -> Optional[Tuple[int, int, int, int, bytes, int, int]]:
        """(kind, flags, conn, seq, payload copy, pos, end) of the next record, or None."""
        while True:
            if self.head == self.tail and self._reload_tail() == self.head:
                return None
            off = self.head & self.mask
            to_end = self.cap - off
            at = self.data + off
            length, kind, flags = struct.unpack_from("<IHH", self.mm, at)
            if kind == PAD:
                if self.head + to_end > self.tail:
                    raise RingCorrupt("PAD past tail")
                self.head += to_end
                continue
            if kind >= 0x8000 or length > self.max_payload:
                raise RingCorrupt(f"bad record kind {kind} / length {length}")
            size = record_size(length)
            if size > to_end or self.head + size > self.tail:
                raise RingCorrupt("record crosses the wrap point or the tail")
            _, _, _, conn, seq = HDR.unpack_from(self.mm, at)
            payload = self.mm[at + 24 : at + 24 + length]
            return kind, flags, conn, seq, payload, self.head, self.head + size

    def advance(self, end: int) -> None:
        self.head = end

    def commit_to(self, pos: int) -> None:
        if pos == self.committed:
            return
        if pos % 8 or pos < self.committed or pos > self.head:
            raise ValueError(f"invalid commit position {pos}")
        self.committed = pos
        self.q[self.x_head] = self.head
        xchg64(self.a_committed, pos)  # seq_cst store: ordered before the load below
        if self.i[self.x_space_parked] == 1 and xchg32(self.a_space_parked, 0) == 1:
            os.eventfd_write(self.space_bell, 1)

    def park(self) -> bool:
        """Announce sleep; False (not parked) if data arrived meanwhile."""
        if self.head != self.tail:
            return False
        if self.bell_dirty:
            _drain(self.data_bell)
            self.bell_dirty = False
        self.q[self.x_head] = self.head
        xchg32(self.a_data_parked, 1)
        self.parked = True
        if self._reload_tail() != self.head:
            self.unpark()
            return False
        return True

    def unpark(self) -> None:
        if not self.parked:
            return
        self.parked = False
        # 0: the gateway took the flag, so it rang (or is about to ring) the bell.
        if xchg32(self.a_data_parked, 0) == 0:
            self.bell_dirty = True


class Full(Exception):
    pass


class Producer(_Ring):
    """Writes ``to_gateway``: resumes at the shared ``tail`` (§7)."""

    def __init__(self, region: Region, data_bell: int, space_bell: int) -> None:
        super().__init__(region, region.to_gateway)
        t, c = self.check_positions()
        self.tail = t
        self.published = t
        self.committed = c
        self.data_bell = data_bell
        self.space_bell = space_bell

    def _reload_committed(self) -> int:
        c = self.q[self.x_committed]
        if c % 8 or c < self.committed or c > self.tail:
            raise RingCorrupt(f"committed out of range: {c} (tail {self.tail})")
        self.committed = c
        return c

    def _pad(self, to_end: int) -> None:
        # Only a PAD's first 8 bytes mean anything; 8 always fit before the wrap point.
        struct.pack_into("<IHH", self.mm, self.data + (self.tail & self.mask), 0, PAD, 0)
        self.tail += to_end

    def try_push(self, kind: int, flags: int, conn: int, seq: int, parts: Tuple[bytes, ...]) -> bool:
        """Write one record (payload = the concatenated parts); False if the ring is full."""
        length = sum(len(p) for p in parts)
        size = record_size(length)
        if size > self.cap:
            raise ValueError(f"record of {length} bytes exceeds the ring")
        to_end = self.cap - (self.tail & self.mask)
        need = size if size <= to_end else to_end + size
        if need > self.cap - (self.tail - self.committed):
            self._reload_committed()
            free = self.cap - (self.tail - self.committed)
            if size > to_end and to_end <= free:
                self._pad(to_end)
                self.flush()
                to_end = self.cap
                need = size
                free = self.cap - (self.tail - self.committed)
            if need > free:
                return False
        if size > to_end:
            self._pad(to_end)
        at = self.data + (self.tail & self.mask)
        HDR.pack_into(self.mm, at, length, kind, flags, conn, seq)
        p = at + 24
        for part in parts:
            self.mm[p : p + len(part)] = part
            p += len(part)
        self.tail += size
        return True

    def flush(self) -> None:
        """Publish written records and ring the gateway if it sleeps."""
        if self.tail == self.published:
            return
        self.published = self.tail
        xchg64(self.a_tail, self.tail)  # seq_cst store: ordered before the load below
        if self.i[self.x_data_parked] == 1 and xchg32(self.a_data_parked, 0) == 1:
            os.eventfd_write(self.data_bell, 1)

    def wait_for_space(self, timeout: float) -> None:
        """Sleep (bounded) until the gateway commits; the caller retries the push."""
        self.flush()
        xchg32(self.a_space_parked, 1)
        before = self.committed
        if self._reload_committed() == before:
            p = select.poll()
            p.register(self.space_bell, select.POLLIN)
            p.poll(int(timeout * 1000))
        xchg32(self.a_space_parked, 0)
        _drain(self.space_bell)
