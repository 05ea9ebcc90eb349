#!/usr/bin/env python3
"""Echo + rooms + auth in Python: the contract `corelay backend-check` drives
(docs/backend-check.md). Honours CORELAY_ATTACH, CORELAY_ROUTE, CORELAY_HEARTBEAT_MS and
CORELAY_TAG. `--asyncio` serves from an asyncio loop instead of the blocking loop.

    corelay backend-check -- python3 examples/check_backend.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Dict, Optional, Set, Tuple

from corelay_backend import IMPL, Accept, Backend, Ctx, Deferred, GatewayGone, OpenRequest, Reject, Service, Verdict, group_id

TOKEN = "letmein"
SUBPROTOCOL = "check.v1"


class CheckService(Service):
    def __init__(self, tag: str) -> None:
        self.tag = tag.encode()
        self.open: Set[int] = set()
        self.held: Dict[int, Tuple[Deferred, bytes]] = {}

    def on_open(self, ctx: Ctx, conn: int, req: OpenRequest) -> Optional[Verdict]:
        if req.path == "/deny":
            return Reject(403)
        if req.path == "/auth" and not (
            req.query_param("token") == TOKEN or req.header("authorization") == b"Bearer " + TOKEN.encode()
        ):
            return Reject(401)
        self.open.add(conn)
        offered = req.header("sec-websocket-protocol") or b""
        if req.path == "/proto" and SUBPROTOCOL.encode() in [p.strip() for p in offered.split(b",")]:
            return Accept(SUBPROTOCOL)
        return Accept()

    def on_message(self, ctx: Ctx, conn: int, data: bytes, binary: bool) -> None:
        earlier = self.held.pop(conn, None)
        t = None if binary else data
        if t == b"count":
            ctx.reply(str(len(self.open)))
        elif t == b"close":
            ctx.close(conn, 4000, "bye")
            ctx.done()
        elif t is not None and (t.startswith(b"hold:") or t.startswith(b"holdack:")):
            d = ctx.defer()
            if d is not None:
                self.held[conn] = (d, t.partition(b":")[2])
                if t.startswith(b"holdack:"):
                    ctx.send(conn, b"held")  # at once: the checker knows it is deferred
        elif t is not None and t.startswith(b"join:"):
            ctx.join(conn, group_id(t[5:]))
            ctx.reply(b"joined:" + t[5:])
        elif t is not None and t.startswith(b"leave:"):
            ctx.leave(conn, group_id(t[6:]))
            ctx.reply(b"left:" + t[6:])
        elif t is not None and t.startswith(b"pub:") and b":" in t[4:]:
            room, _, msg = t[4:].partition(b":")
            ctx.publish(group_id(room), msg)
            ctx.done()
        elif t is not None and t.startswith(b"push:"):
            ctx.send(conn, t[5:])
            ctx.reply(b"pushed")
        else:
            ctx.reply(self.tag + data, binary)
        if earlier is not None:  # completed after the later request: out of order
            ctx.reply_to(earlier[0], earlier[1])

    def on_closed(self, ctx: Ctx, conn: int, code: int, reason: bytes) -> None:
        self.open.discard(conn)
        h = self.held.pop(conn, None)
        if h is not None:
            ctx.done_with(h[0])


def main() -> int:
    backend = Backend.attach_env(retry=10.0)
    print(f"python backend attached ({backend.shards} shards, impl {IMPL})", file=sys.stderr)
    service = CheckService(os.environ.get("CORELAY_TAG", ""))
    try:
        if "--asyncio" in sys.argv:
            from corelay_backend import aio

            asyncio.run(aio.serve(backend, service))
        else:
            backend.run(service)
    except GatewayGone:
        return 0
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
