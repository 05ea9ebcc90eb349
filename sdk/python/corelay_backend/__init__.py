"""corelay backends in pure Python: attach to a corelay gateway and serve its connections
over the shared-memory rings (docs/ring-protocol.md).

Blocking::

    from corelay_backend import Backend, Service

    class Echo(Service):
        def on_message(self, ctx, conn, data, binary):
            ctx.reply(data, binary)

    Backend.attach_env().run(Echo())

asyncio: ``await corelay_backend.aio.serve(backend, service)``.

Two implementations behind the same API, chosen when the package is imported:
``CORELAY_PY_IMPL=pure`` (the default: the rings in Python, no dependency) or
``CORELAY_PY_IMPL=c`` (ctypes over ``libcorelay_backend.so``, the C ABI of sdk/c; the library
is ``CORELAY_BACKEND_LIB`` or found by the loader). ``IMPL`` says which one is in use.
docs/benchmarks.md has the measurements behind the default.
"""

import os as _os

from .backend import (
    Accept,
    Backend,
    Ctx,
    Deferred,
    GatewayGone,
    OpenRequest,
    ProtocolError,
    Reject,
    RingCorrupt,
    Service,
    Verdict,
    group_id,
)

IMPL = _os.environ.get("CORELAY_PY_IMPL") or "pure"
if IMPL == "c":
    from ._cabi import Backend, Ctx, group_id  # type: ignore[assignment]  # noqa: F811
elif IMPL != "pure":
    raise ImportError(f"CORELAY_PY_IMPL={IMPL!r}: expected 'pure' or 'c'")

__all__ = [
    "Accept",
    "Backend",
    "Ctx",
    "Deferred",
    "IMPL",
    "GatewayGone",
    "OpenRequest",
    "ProtocolError",
    "Reject",
    "RingCorrupt",
    "Service",
    "Verdict",
    "group_id",
]
__version__ = "0.1.0"
