"""WebSocket-FLV with the python `websockets` library (a client corelay did not write).

Usage: ws_flv.py ws://HOST:PORT/live/NAME.flv OUT.flv [CA.pem]
       (a wss:// URL with CA.pem: the server's certificate must verify against that CA)
Writes the binary messages, in order, to OUT.flv until the gateway closes the stream (the
publisher ended); checks every message is binary and the first is the FLV file header.
Prints "ok ws-flv N" (N messages). Every wait is bounded.
"""

import asyncio
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

T = 30  # seconds: upper bound of any single wait


async def main(url, out, ca):
    n = 0
    tls = ssl.create_default_context(cafile=ca) if ca else None
    with open(out, "wb") as f:
        async with connect(url, max_size=2**24, ssl=tls) as ws:
            while True:
                try:
                    m = await asyncio.wait_for(ws.recv(), T)
                except ConnectionClosedOK:
                    break
                assert isinstance(m, bytes), type(m)
                if n == 0:
                    assert m[:3] == b"FLV" and len(m) == 13, m[:16]
                f.write(m)
                n += 1
    assert ws.close_code == 1000, ws.close_code
    print(f"ok ws-flv {n}")


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
