"""The python `websockets` library (a client corelay did not write) against a real gateway.

Usage: ws_client.py demo  ws://HOST:PORT        (gateway + demo backend process, via the ring)
       ws_client.py wss   wss://HOST:PORT CA.pem (echo gateway over TLS)
Exits non-zero with a traceback on the first mismatch; every wait is bounded.
"""

import asyncio
import ssl
import sys

from websockets.asyncio.client import connect

T = 10  # seconds: upper bound of any single wait


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), T)


async def echo_cases(url, **kw):
    async with connect(url + "/", max_size=2**20, **kw) as ws:
        # Empty binary was lost when it doubled as the ring's "done" sentinel.
        for m in [b"", "", b"x", b"", "\u00e9t\u00e9", bytes(range(256)) * 256]:
            await ws.send(m)
            got = await recv(ws)
            assert got == m, (m[:16], got[:16])
        # A ping answered by a pong.
        pong = await ws.ping(b"p")
        await asyncio.wait_for(pong, T)
        await ws.close(code=1000, reason="bye")
        assert ws.close_code == 1000, ws.close_code


async def demo(url):
    await echo_cases(url)
    # Rooms: the sender's message is published to every member (itself included) and its
    # request is completed without a reply of its own (Done): exactly one copy each.
    async with connect(url + "/room/py") as a, connect(url + "/room/py") as b:
        for i in range(5):
            await a.send(f"m{i}")
            assert await recv(a) == f"m{i}"
            assert await recv(b) == f"m{i}"
        await b.send(b"")
        assert await recv(a) == b""
        assert await recv(b) == b""
        # Nothing else is pending on either side.
        for ws in (a, b):
            try:
                extra = await asyncio.wait_for(ws.recv(), 0.3)
            except asyncio.TimeoutError:
                continue
            raise AssertionError(f"unexpected extra message {extra!r}")
    # The backend is told the client's real address.
    async with connect(url + "/whoami") as ws:
        await ws.send("?")
        info = await recv(ws)
        port = ws.local_address[1]
        assert f"peer=127.0.0.1:{port} " in info, (info, port)


async def wss(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    await echo_cases(url, ssl=ctx, server_hostname="localhost")


async def main():
    mode, url = sys.argv[1], sys.argv[2].rstrip("/")
    if mode == "demo":
        await demo(url)
    elif mode == "wss":
        await wss(url, sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"ok {mode}")


asyncio.run(main())
