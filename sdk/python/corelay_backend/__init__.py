"""corelay backends in pure Python: attach to a corelay gateway and serve its connections
over the shared-memory rings (docs/ring-protocol.md).

Blocking::

    from corelay_backend import Backend, Service

    class Echo(Service):
        def on_message(self, ctx, conn, data, binary):
            ctx.reply(data, binary)

    Backend.attach_env().run(Echo())

asyncio: ``await corelay_backend.aio.serve(backend, service)``.
"""

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
__version__ = "0.1.0"
