#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ (small, real protocol inputs).

Run from anywhere: python3 fuzz/gen_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(fin, op, payload, mask=None, rsv=0):
    b0 = (0x80 if fin else 0) | rsv | op
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        h = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        h = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if mask:
        h += bytes(mask)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return h + payload


M = [0x37, 0xFA, 0x21, 0x3D]


def ws_seeds():
    s = {}
    hello = b"Hello"
    s["rfc_text_masked"] = (0, frame(True, 1, hello, M))
    s["rfc_text_unmasked_client"] = (1, frame(True, 1, hello))
    s["rfc_fragmented_client"] = (1, frame(False, 1, b"Hel") + frame(True, 0, b"lo"))
    s["rfc_ping_client"] = (1, frame(True, 9, hello))
    s["rfc_pong_masked"] = (0, frame(True, 10, hello, M))
    s["binary_256"] = (0, frame(True, 2, bytes(range(256)), M))
    s["binary_70000_header_only"] = (0, frame(True, 2, bytes(70000), M)[:200])
    s["close_1000"] = (0, frame(True, 8, struct.pack(">H", 1000) + b"bye", M))
    s["close_empty"] = (0, frame(True, 8, b"", M))
    s["close_bad_code"] = (0, frame(True, 8, struct.pack(">H", 1005), M))
    s["close_1byte"] = (0, frame(True, 8, b"\x03", M))
    euro = "€".encode()
    emoji = "😀".encode()
    s["utf8_split_fragments_ping"] = (0, frame(False, 1, b"a" + euro[:2], M) + frame(True, 9, b"p", M) + frame(True, 0, euro[2:] + b"b", M))
    s["utf8_emoji_split_client"] = (1, frame(False, 1, emoji[:3]) + frame(True, 10, b"") + frame(True, 0, emoji[3:]))
    s["utf8_invalid"] = (0, frame(True, 1, b"ok\xff", M))
    s["utf8_surrogate"] = (0, frame(True, 1, b"\xed\xa0\x80", M))
    s["utf8_truncated_end"] = (0, frame(True, 1, b"\xe2\x82", M))
    s["text_multibyte"] = (0, frame(True, 1, "héllo wörld 中文 😀".encode() * 5, M))
    s["rsv1_allowed"] = (0x40, frame(True, 1, b"x", M, rsv=0x40))
    s["rsv1_rejected"] = (0, frame(True, 1, b"x", M, rsv=0x40))
    s["unknown_opcode"] = (0, frame(True, 3, b"", M))
    s["fragmented_ping"] = (0, frame(False, 9, b"", M))
    s["ping_too_big"] = (0, frame(True, 9, bytes(126), M))
    s["continuation_first"] = (0, frame(True, 0, b"x", M))
    s["expected_continuation"] = (0, frame(False, 1, b"x", M) + frame(True, 2, b"y", M))
    s["len_msb"] = (0, bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1]) + bytes(M))
    s["too_big_small_limits"] = (0x80, frame(True, 2, bytes(250), M))
    s["message_too_big_small_limits"] = (0x80, frame(False, 2, bytes(200), M) + frame(True, 0, bytes(150), M))
    s["many_small"] = (0, b"".join(frame(True, 1 + (i % 2), bytes([65 + i]) * i, M) for i in range(20)))
    s["mixed_stream"] = (0, frame(True, 1, b"a", M) + frame(True, 9, b"", M) + frame(False, 2, b"12", M)
                         + frame(True, 10, b"z", M) + frame(True, 0, b"3", M) + frame(True, 8, struct.pack(">H", 1001), M))
    out = os.path.join(HERE, "seeds", "ws_decoder")
    os.makedirs(out, exist_ok=True)
    for i, (name, (opts, stream)) in enumerate(sorted(s.items())):
        seed = struct.pack("<H", 0x1234 + 97 * i)
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([opts]) + seed + stream)
    return len(s)


def hs_seeds():
    good = (b"GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")
    s = {
        "good": good,
        "good_early_frame": good + bytes([0x81, 0x85]) + bytes(M) + b"abcde",
        "lowercase": good.lower().replace(b"dghlihnhbxbszsbub25jzq==", b"dGhlIHNhbXBsZSBub25jZQ=="),
        "keepalive_upgrade": good.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"),
        "post": good.replace(b"GET", b"POST", 1),
        "http10": good.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        "version8": good.replace(b"Version: 13", b"Version: 8"),
        "no_version": good.replace(b"Sec-WebSocket-Version: 13\r\n", b""),
        "bad_key": good.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZSBub25jZQ"),
        "no_key": good.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
        "no_host": good.replace(b"Host: server.example.com\r\n", b""),
        "dup_host": good.replace(b"Host: server.example.com\r\n", b"Host: a\r\nHost: b\r\n"),
        "no_upgrade": good.replace(b"Upgrade: websocket\r\n", b""),
        "conn_close": good.replace(b"Connection: Upgrade", b"Connection: close"),
        "partial": good[:60],
        "star_target": good.replace(b"/chat?room=1", b"*", 1),
        "junk": b"\x00\x01\x02 garbage\r\n\r\n",
        "many_headers": good.replace(b"\r\n\r\n", b"\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(40)) + b"\r\n"),
    }
    out = os.path.join(HERE, "seeds", "handshake")
    os.makedirs(out, exist_ok=True)
    for name, req in sorted(s.items()):
        for sel in (0x40, 0x41):  # 320-byte head limit; 8 KiB limit (both 32 headers)
            with open(os.path.join(out, f"{name}_{sel:02x}"), "wb") as f:
                f.write(bytes([sel]) + req)
    return 2 * len(s)


def tls_seeds():
    """tls_differential: suite byte, then (op, a, b) triples (see parse() in tests/tls_diff/mod.rs)."""

    def op(code, a=0, b=0):
        return bytes([code, a, b])

    data = lambda n: op(0, n >> 8, n & 0xFF)
    deliver = lambda chunk: op(10, 0, chunk)
    streams = {
        "data": data(100) + data(0) + deliver(0),
        "dribble": data(300) + deliver(1),
        "max_record": op(2, 0, 7) + deliver(3),
        "oversize": op(2, 1, 7),
        "key_update": op(4, 1) + data(5) + op(11, 0, 9) + op(4, 0) + data(2),
        "close_notify": data(5) + op(5, 1, 0) + data(5),
        "warnings": op(5, 1, 90) * 5,
        "fatal_alert": op(5, 2, 40),
        "empty_run": op(3) * 33,
        "bit_flip": data(64) + op(9, 0, 40),
        "renegotiation": op(9, 1) + data(3) + op(9, 1),
        "raw_header": op(8, 3, 40) + op(8, 0x48, 0),
        "padding": op(7, 0, 10) + op(7, 99, 4),
        "handshake_msg": op(6, 4, 10),
    }
    out = os.path.join(HERE, "seeds", "tls_differential")
    os.makedirs(out, exist_ok=True)
    n = 0
    for name, ops in sorted(streams.items()):
        for suite in range(6):
            with open(os.path.join(out, f"{name}_{suite}"), "wb") as f:
                f.write(bytes([suite]) + ops)
            n += 1
    return n


if __name__ == "__main__":
    print("ws_decoder seeds:", ws_seeds())
    print("handshake seeds:", hs_seeds())
    print("tls_differential seeds:", tls_seeds())
