"""The atomics the ring protocol needs, from pure Python (docs/ring-protocol.md §0).

What the protocol needs, and how each is done here (x86-64 only):

* **u64/u32 loads** (acquire / seq_cst): an aligned ``memoryview.cast('Q')`` / ``cast('I')``
  element read. CPython copies the element with a fixed-size ``memcpy`` that compiles to one
  aligned ``mov``, which x86-64 performs atomically (no tearing). On x86-64 (TSO) every
  plain load is an acquire load, and a seq_cst load is a plain ``mov`` too, provided every
  seq_cst *store* is a locked instruction (the mapping compilers use: loads ``mov``, stores
  ``xchg``).
* **Advisory/relaxed or release stores** (``head``, payload bytes before ``tail``): plain
  aligned stores; TSO never reorders a store with earlier loads or stores, so a store of
  ``tail`` after the record bytes publishes them.
* **seq_cst stores and exchanges** (``tail``, ``committed``, the ``*_parked`` flags): these
  need a StoreLoad barrier (the Dekker handshake of §4: store my position, then load the
  other side's parked flag). Python has no such operation, and nothing in the interpreter
  promises one between two statements. So we run a real ``xchg`` instruction: seven bytes of
  machine code (``mov rax, rsi; xchg [rdi], rax; ret``) placed in an anonymous mapping that
  is then made read+execute only, called through ``ctypes``. ``xchg`` with a memory operand
  is implicitly locked: a full barrier and an atomic exchange, exactly C11's
  ``atomic_exchange`` (seq_cst) on x86-64.

No compiler is needed at install time. Other architectures need a different sequence (e.g.
AArch64: ``swpal`` or an ``ldaxr``/``stlxr`` loop, and ``ldar`` for seq_cst loads, since plain
loads there are not acquire); this module refuses to load on them rather than guess.
"""

from __future__ import annotations

import ctypes
import mmap
import platform

__all__ = ["xchg64", "xchg32", "address_of"]

_MACHINE = platform.machine().lower()
if _MACHINE not in ("x86_64", "amd64"):
    raise ImportError(
        f"corelay_backend: pure-Python ring atomics are implemented for x86-64 only, not {_MACHINE}"
    )

# System V AMD64: first argument (pointer) in rdi, second (value) in rsi, result in rax.
_XCHG64 = bytes([0x48, 0x89, 0xF0, 0x48, 0x87, 0x07, 0xC3])  # mov rax,rsi; xchg [rdi],rax; ret
_XCHG32 = bytes([0x89, 0xF0, 0x87, 0x07, 0xC3])  # mov eax,esi; xchg [rdi],eax; ret

_page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
_page[0 : len(_XCHG64)] = _XCHG64
_page[32 : 32 + len(_XCHG32)] = _XCHG32
_base = ctypes.addressof(ctypes.c_char.from_buffer(_page))
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# W^X: the page is never writable and executable at once.
if _libc.mprotect(_base, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
    raise ImportError(
        f"corelay_backend: cannot make the atomics page executable (errno {ctypes.get_errno()})"
    )

xchg64 = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)(_base)
"""``xchg64(addr, value) -> old``: seq_cst atomic exchange of the u64 at ``addr``."""
xchg32 = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32)(_base + 32)
"""``xchg32(addr, value) -> old``: seq_cst atomic exchange of the u32 at ``addr``."""


def address_of(buf: mmap.mmap) -> int:
    """Address of the first byte of a writable mapping (keeps an export on it)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))
