"""Python 3 glue for the Autobahn|Testsuite fuzzingclient (installed by tools/autobahn/port.py).

The suite was written for Python 2, where a plain string literal is a byte string. After the
2to3 pass such literals are text; the rule here is the one Python 2 applied: a text payload
stands for its UTF-8 bytes (the source files are UTF-8). Literals spelled with \\x escapes are
turned into bytes literals by port.py before this module ever sees them.
"""

import binascii as _binascii


def as_bytes(value):
    """Bytes Python 2 would have sent for `value` (None and bytes unchanged)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def as_text(value):
    """Deep copy with every bytes object decoded (reports are JSON and HTML)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: as_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_text(v) for v in value)
    return value


def canonical(value):
    """Event lists with text turned into bytes, so that expected == observed compares what
    went over the wire (Python 2 compared pickles of byte strings)."""
    if isinstance(value, (list, tuple)):
        return type(value)(canonical(v) for v in value)
    return as_bytes(value)


class binascii:  # noqa: N801  (stands in for the module of that name in ported files)
    """`binascii.b2a_hex` as the reports use it: any payload in, text out."""

    @staticmethod
    def b2a_hex(data):
        return _binascii.b2a_hex(as_bytes(data)).decode("ascii")

    hexlify = b2a_hex


class BytesPayloads:
    """Mixin in front of autobahn's WebSocketProtocol: every payload the cases hand to a send
    method reaches the wire as bytes."""

    def sendData(self, data, *args, **kw):
        return super().sendData(as_bytes(data), *args, **kw)

    def sendFrame(self, opcode, payload=b"", *args, **kw):
        return super().sendFrame(opcode, as_bytes(payload), *args, **kw)

    def sendMessage(self, payload, *args, **kw):
        return super().sendMessage(as_bytes(payload), *args, **kw)

    def sendMessageFrame(self, payload, *args, **kw):
        return super().sendMessageFrame(as_bytes(payload), *args, **kw)

    def sendMessageFrameData(self, payload, *args, **kw):
        return super().sendMessageFrameData(as_bytes(payload), *args, **kw)

    def sendPing(self, payload=None):
        return super().sendPing(as_bytes(payload))

    def sendPong(self, payload=None):
        return super().sendPong(as_bytes(payload))

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):  # noqa: N803
        return super().sendCloseFrame(code, as_bytes(reasonUtf8), isReply)
