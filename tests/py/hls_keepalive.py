"""HLS keep-alive against the gateway with Python's own HTTP client and raw sockets.

Usage: hls_keepalive.py HOST:PORT NAME QUERY MODE
MODE basic:  many requests on one http.client connection (the socket must stay the same),
             pipelined requests answered in order, `Connection: close`, HTTP/1.0.
MODE limits: the gateway runs with hls_keepalive_requests = 3: the third response says
             `Connection: close` and the connection ends; an idle connection is closed by
             the gateway (hls_keepalive_ms).
Prints "ok hls-keepalive MODE ..." on success; any failed check raises.
"""

import http.client
import socket
import sys


def read_response(f):
    """One HTTP/1.1 response from a buffered socket file: (status, headers, body)."""
    line = f.readline()
    assert line.startswith(b"HTTP/1.1 "), line
    status = int(line.split()[1])
    headers = {}
    while True:
        h = f.readline()
        assert h, "connection ended inside a response head"
        if h in (b"\r\n", b"\n"):
            break
        k, v = h.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers["content-length"])
    body = f.read(n)
    assert len(body) == n, (len(body), n)
    return status, headers, body


def raw(addr, payload):
    s = socket.create_connection(addr, timeout=20)
    s.sendall(payload)
    return s, s.makefile("rb")


def ends(f):
    """The gateway closed the connection (EOF after the last response)."""
    return f.read(1) == b""


def segments(playlist):
    return [l for l in playlist.decode().splitlines() if l and not l.startswith("#")]


def basic(addr, name, query):
    host, port = addr
    q = "?" + query if query else ""
    c = http.client.HTTPConnection(host, port, timeout=20)
    c.request("GET", f"/live/{name}.m3u8{q}")
    r = c.getresponse()
    pl = r.read()
    assert r.status == 200, r.status
    assert r.getheader("Connection") == "keep-alive", r.getheaders()
    sock, local = c.sock, c.sock.getsockname()
    segs = segments(pl)
    assert segs, pl
    n = 1
    # Segment URIs are relative (no query): the connection is authorized already.
    for uri in segs[-3:] + [f"{name}-999999999.ts", segs[-1]]:
        c.request("GET", f"/live/{uri}")
        r = c.getresponse()
        body = r.read()
        n += 1
        if "999999999" in uri:
            assert r.status == 404, r.status
            assert r.getheader("Connection") == "keep-alive"
        else:
            assert r.status == 200, (uri, r.status)
            assert len(body) > 0 and len(body) % 188 == 0 and body[0] == 0x47, uri
        # http.client would open a new socket if the old one had closed.
        assert c.sock is sock and c.sock.getsockname() == local, "connection not reused"
    c.request("GET", f"/live/{name}.m3u8{q}")
    r = c.getresponse()
    assert r.status == 200 and b"#EXTM3U" in r.read()
    n += 1
    assert c.sock is sock, "connection not reused"
    c.close()

    # Pipelined: three requests in one write, three responses in order on one socket.
    seg = segs[-1]
    reqs = (
        f"GET /live/{name}.m3u8{q} HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET /live/{seg} HTTP/1.1\r\nHost: x\r\n\r\n"
        f"GET /live/{name}-999999999.ts HTTP/1.1\r\nHost: x\r\n\r\n"
    ).encode()
    s, f = raw(addr, reqs)
    st1, h1, b1 = read_response(f)
    st2, h2, b2 = read_response(f)
    st3, h3, _ = read_response(f)
    assert (st1, st2, st3) == (200, 200, 404), (st1, st2, st3)
    assert h1["content-type"] == "application/vnd.apple.mpegurl" and b"#EXTM3U" in b1
    assert h2["content-type"] == "video/mp2t" and b2[0] == 0x47
    s.close()

    # Many pipelined segment requests from a reader with a small receive buffer: the
    # gateway answers them one after another as the socket drains (reading the next request
    # paused meanwhile), all of them, in order.
    many = 200
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(20)
    s.connect(addr)
    # The first request (the playlist, with the query) is the one authorized.
    wanted = [f"{name}.m3u8{q}"] + [segs[i % len(segs)] for i in range(many)]
    s.sendall("".join(f"GET /live/{u} HTTP/1.1\r\nHost: x\r\n\r\n" for u in wanted).encode())
    f = s.makefile("rb")
    st, h, b = read_response(f)
    assert st == 200 and b"#EXTM3U" in b, st
    got = 0
    for u in wanted[1:]:
        st, h, b = read_response(f)
        assert st == 200 and h["connection"] == "keep-alive" and b[0] == 0x47, (u, st)
        got += len(b)
    s.close()

    # `Connection: close` is honoured: the response says so and the connection ends.
    s, f = raw(addr, f"GET /live/{name}.m3u8{q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    st, h, _ = read_response(f)
    assert st == 200 and h["connection"] == "close", h
    assert ends(f), "still open after Connection: close"
    s.close()

    # HTTP/1.0 closes unless it asks for keep-alive.
    s, f = raw(addr, f"GET /live/{name}.m3u8{q} HTTP/1.0\r\n\r\n".encode())
    st, h, _ = read_response(f)
    assert st == 200 and h["connection"] == "close", h
    assert ends(f), "HTTP/1.0 connection still open"
    s.close()
    ka = f"GET /live/{name}.m3u8{q} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode()
    s, f = raw(addr, ka)
    st, h, _ = read_response(f)
    assert st == 200 and h["connection"] == "keep-alive", h
    s.sendall(f"GET /live/{seg} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
    st, h, b = read_response(f)
    assert st == 200 and b[0] == 0x47, st
    s.close()

    # A 404 for an unknown stream keeps the (not yet authorized) connection: the next
    # request on it is authorized and answered.
    s, f = raw(addr, b"GET /live/nosuch.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
    st, h, _ = read_response(f)
    assert st == 404 and h["connection"] == "keep-alive", (st, h)
    s.sendall(f"GET /live/{name}.m3u8{q} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    st, h, b = read_response(f)
    assert st == 200 and b"#EXTM3U" in b, st
    s.close()
    # The same pipelined: twenty 404s, then the playlist, in order on one connection.
    unknown = b"GET /live/nosuch.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n" * 20
    s, f = raw(addr, unknown + f"GET /live/{name}.m3u8{q} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    for _ in range(20):
        st, h, _ = read_response(f)
        assert st == 404 and h["connection"] == "keep-alive", (st, h)
    st, h, b = read_response(f)
    assert st == 200 and b"#EXTM3U" in b, st
    s.close()

    # Another stream on an authorized connection: it ends, unanswered (a client retries
    # on a new connection, authorized on its own).
    s, f = raw(addr, f"GET /live/{name}.m3u8{q} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert read_response(f)[0] == 200
    s.sendall(b"GET /live/other.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ends(f), "answered another stream on an authorized connection"
    s.close()
    print(
        f"ok hls-keepalive basic: {n} requests on one connection, {many} pipelined "
        f"({got} bytes of segments), close rules"
    )


def limits(addr, name, query):
    q = "?" + query if query else ""
    get = f"GET /live/{name}.m3u8{q} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    s, f = raw(addr, get)
    conns = []
    for i in range(3):
        if i:
            s.sendall(get)
        st, h, _ = read_response(f)
        assert st == 200, st
        conns.append(h["connection"])
    assert conns == ["keep-alive", "keep-alive", "close"], conns
    assert ends(f), "still open after the last allowed request"
    s.close()
    # Idle: the gateway closes a kept connection that asks nothing more.
    s, f = raw(addr, get)
    st, h, _ = read_response(f)
    assert st == 200 and h["connection"] == "keep-alive", h
    assert ends(f), "idle connection not closed"
    s.close()
    print("ok hls-keepalive limits")


if __name__ == "__main__":
    hp, name, query, mode = sys.argv[1:5]
    host, port = hp.rsplit(":", 1)
    {"basic": basic, "limits": limits}[mode]((host, int(port)), name, query)
