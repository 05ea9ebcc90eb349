#!/usr/bin/env python3
"""A WebSocket echo server in one Python process (`websockets`, asyncio): what a Python user
runs without corelay, as the baseline of tools/bench/scripts/sdk_echo.sh. Echoes every
message (text or binary) to its sender. Prints "listening on ws://HOST:PORT/" when ready.

    python3 py_ws_echo.py [--host 127.0.0.1] [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(msg)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    if not a.host.startswith("127.") and a.host not in ("localhost", "::1"):
        sys.exit("py_ws_echo.py: loopback addresses only")
    stop = asyncio.get_running_loop().create_future()
    for s in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(s, stop.set_result, None)
    # No compression and no message size beyond what the bench sends: the same work as the
    # gateway + backend path (which does not negotiate permessage-deflate by default).
    async with serve(echo, a.host, a.port, compression=None, max_size=1 << 20) as server:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on ws://{host}:{port}/", file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
