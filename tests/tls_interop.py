"""Python `ssl` (OpenSSL) client cases for tests/tls_interop.rs, against a gateway in echo mode.

    python3 tests/tls_interop.py HOST:PORT CASE

The TLS engine runs over a MemoryBIO pair, so the test decides what goes on the wire: record
sizes, a flipped ciphertext byte, ciphertext dribbled one byte per send, close_notify in the
same segment as data. Prints `ok` and exits 0 on success; anything else is a failure.
"""

import os
import socket
import ssl
import sys
import time


class Conn:
    def __init__(self, addr, tls12=False, ciphers=None):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.set_ciphers(ciphers)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.dribble = False
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
        self.flush()

    def pending_wire(self):
        return self.out.read()

    def send_wire(self, data):
        if self.dribble:
            for i in range(len(data)):
                self.sock.sendall(data[i : i + 1])
        else:
            self.sock.sendall(data)

    def flush(self):
        data = self.pending_wire()
        if data:
            self.send_wire(data)

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            self.inc.write_eof()
        else:
            self.inc.write(data)
        return data

    def write(self, data, record=None):
        """Encrypt `data` as records of at most `record` bytes (OpenSSL's 2^14 by default)."""
        step = record or len(data) or 1
        for i in range(0, len(data), step):
            self.tls.write(data[i : i + step])

    def read_exact(self, n):
        got = b""
        while len(got) < n:
            try:
                got += self.tls.read(n - len(got))
            except ssl.SSLWantReadError:
                self.flush()
                if not self.fill():
                    raise EOFError("connection closed after %d of %d bytes" % (len(got), n))
        return got

    def read_until(self, marker):
        got = b""
        while marker not in got:
            got += self.read_exact(1)
        return got


def frame(payload, op=2):
    """A masked client WebSocket frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | op, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | op, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | op, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(c):
    """An unmasked server frame: (opcode, payload)."""
    b0, b1 = c.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(c.read_exact(2), "big")
    elif n == 127:
        n = int.from_bytes(c.read_exact(8), "big")
    return b0 & 0x0F, c.read_exact(n)


def upgrade(c, record=None):
    req = (
        b"GET /interop HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    c.write(req, record)
    c.flush()
    head = c.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head


def echo(c, payload, record=None):
    c.write(frame(payload), record)
    c.flush()
    op, got = read_frame(c)
    assert op == 2 and got == payload, (op, len(got), len(payload))


def case_full_records(addr):
    """Records of exactly 2^14 plaintext bytes both ways (TLS 1.3 and TLS 1.2 AES-GCM)."""
    for tls12 in (False, True):
        c = Conn(addr, tls12=tls12)
        upgrade(c)
        payload = bytes(i % 251 for i in range(3 * 16384))
        msg = frame(payload)
        # Cut so that every record but the last carries exactly 2^14 bytes.
        c.write(msg, 16384)
        c.flush()
        op, got = read_frame(c)
        assert got == payload


def case_tls12_chacha(addr):
    c = Conn(addr, tls12=True, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
    assert c.tls.version() == "TLSv1.2", c.tls.version()
    assert "CHACHA20" in c.tls.cipher()[0], c.tls.cipher()
    upgrade(c)
    echo(c, b"chacha over tls 1.2")
    echo(c, bytes(range(256)) * 300)


def case_dribble(addr):
    """1-byte records, and ciphertext sent one byte per segment."""
    for tls12 in (False, True):
        c = Conn(addr, tls12=tls12)
        upgrade(c, record=1)
        echo(c, b"one byte per record", record=1)
        c.dribble = True
        echo(c, b"one byte per segment " * 40)
        echo(c, b"both", record=1)


def case_tampered(addr):
    """A flipped ciphertext byte: bad_record_mac alert, then the connection closes."""
    for tls12 in (False, True):
        c = Conn(addr, tls12=tls12)
        upgrade(c)
        echo(c, b"before")
        c.write(frame(b"tampered"))
        wire = bytearray(c.pending_wire())
        wire[-3] ^= 0x40
        c.send_wire(bytes(wire))
        try:
            op, got = read_frame(c)
            raise AssertionError("tampered record accepted: %r" % got)
        except ssl.SSLError as e:
            assert "BAD_RECORD_MAC" in str(e).upper(), e
        except EOFError:
            raise AssertionError("closed without a bad_record_mac alert")


def case_close_notify(addr):
    """Data and close_notify in one segment: the echo comes back, then our close_notify."""
    for tls12 in (False, True):
        c = Conn(addr, tls12=tls12)
        upgrade(c)
        payload = b"last words" * 500
        c.write(frame(payload))
        try:
            c.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        c.flush()
        op, got = read_frame(c)
        assert got == payload, len(got)
        # The next thing is the gateway's close_notify (unwrap completes), not a bare FIN.
        deadline = time.time() + 10
        while True:
            try:
                c.tls.unwrap()
                break
            except ssl.SSLWantReadError:
                assert time.time() < deadline, "no close_notify"
                if not c.fill():
                    raise AssertionError("FIN without close_notify")


CASES = {
    "full_records": case_full_records,
    "tls12_chacha": case_tls12_chacha,
    "dribble": case_dribble,
    "tampered": case_tampered,
    "close_notify": case_close_notify,
}

if __name__ == "__main__":
    CASES[sys.argv[2]](sys.argv[1])
    print("ok")
