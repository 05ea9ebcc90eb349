"""Port the installed Autobahn|Testsuite (Python 2 source) to Python 3, in place.

Run by tools/autobahn/setup.sh inside the venv, on pristine copies of the pinned packages:
  python port.py SITE_PACKAGES
Step 1 is fissix (the maintained fork of lib2to3, which Python 3.13 dropped). Step 2 is the
short list of edits below; each names the exact text it expects and the port stops if that
text is not there exactly as often as expected, so an upstream change fails loudly instead
of being mis-ported. Only what the fuzzingclient runs is made to work.
"""

import io
import os
import re
import shutil
import sys
import tokenize

from fissix import refactor

SITE = sys.argv[1]
SUITE = os.path.join(SITE, "autobahntestsuite")
CASES = os.path.join(SUITE, "case")


def edit(rel, old, new, times=1):
    """Replace `old` by `new` in SITE/rel; `old` must occur exactly `times` times."""
    path = os.path.join(SITE, rel)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = text.count(old)
    if found != times:
        sys.exit(f"port: {rel}: expected {times} x {old!r}, found {found}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new))


def bytes_literals(path):
    """Prefix `b` to every unprefixed string literal with a \\x escape: in Python 2 those
    were byte strings (payload octets, often invalid UTF-8), and must stay bytes."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    lines = src.splitlines(keepends=True)
    spots = [
        t.start
        for t in tokenize.generate_tokens(io.StringIO(src).readline)
        if t.type == tokenize.STRING and t.string[0] in "'\"" and "\\x" in t.string
    ]
    for row, col in reversed(spots):
        lines[row - 1] = lines[row - 1][:col] + "b" + lines[row - 1][col:]
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(lines))
    return len(spots)


# 1. Syntax: fissix with its default fixers, over the whole suite package.
fixers = refactor.get_fixers_from_package("fissix.fixes")
tool = refactor.RefactoringTool(fixers, {"print_function": False})
tool.refactor_dir(SUITE, write=True)
if tool.errors:
    sys.exit(f"port: fissix failed on {len(tool.errors)} file(s): {tool.errors[:3]}")

# 2. Our glue module next to the suite.
shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "py3compat.py"),
            os.path.join(SUITE, "py3compat.py"))

# 3. Byte-string literals in the case modules; hex dumps through the text-returning binascii.
converted = 0
for name in sorted(os.listdir(CASES)):
    if not name.endswith(".py"):
        continue
    converted += bytes_literals(os.path.join(CASES, name))
    rel = f"autobahntestsuite/case/{name}"
    with open(os.path.join(CASES, name), encoding="utf-8") as f:
        text = f.read()
    imports = len(re.findall(r"^import binascii$", text, re.M))
    if imports:
        edit(rel, "\nimport binascii\n", "\nfrom ..py3compat import binascii\n", imports)
    # type(name, (object, Case), {}) has no consistent MRO on Python 3.
    if "(object, Case, )" in text:
        edit(rel, "(object, Case, )", "(Case, )", text.count("(object, Case, )"))
if converted < 100:  # the 6.x UTF-8 tables alone hold hundreds
    sys.exit(f"port: only {converted} byte-string literals found; upstream changed?")
print(f"port: {converted} byte-string literals")

# 4. The driver: payloads as bytes on the way out, text in the reports.
F = "autobahntestsuite/fuzzing.py"
edit(F, "\nimport os, json, binascii, time, textwrap, pkg_resources\n",
     "\nimport os, json, time, textwrap, pkg_resources\n"
     "from .py3compat import binascii, as_text, BytesPayloads\n")
edit(F, "\nclass FuzzingProtocol:\n", "\nclass FuzzingProtocol(BytesPayloads):\n")
edit(F, "p = ''.join(payload)", "p = b''.join(payload)")
edit(F, "   def logCase(self, caseResults):\n",
     "   def logCase(self, caseResults):\n      caseResults = as_text(caseResults)\n")
# Reports are text files: write text, in UTF-8 whatever the locale.
edit(F, "open(os.path.join(outdir, report_filename), 'w')",
     "open(os.path.join(outdir, report_filename), 'w', encoding='utf-8')", 4)
edit(F, "% (c[0], case[c[0]], c[1])).encode(\"utf-8\"))", "% (c[0], case[c[0]], c[1])))")
edit(F, "ll.encode('utf8')))", "ll))")

# 5. Expected vs observed events: compare the octets, not pickles of mixed str/bytes.
C = "autobahntestsuite/case/"
edit(C + "case.py", "return pickle.dumps(obj1) == pickle.dumps(obj2)",
     "return canonical(obj1) == canonical(obj2)")
edit(C + "case.py", "\nimport pickle\n", "\nimport pickle\nfrom ..py3compat import canonical\n")

# 6. Python 3 semantics the syntax pass cannot see, in the cases the fuzzingclient runs.
for n in ("case6_4_2.py", "case6_4_4.py"):  # one payload octet: a slice, not an int
    edit(C + n, "PAYLOAD[12])", "PAYLOAD[12:13])", 2)
edit(C + "case10_1_1.py", "len(self.payload) / self.p.autoFragmentSize",
     "len(self.payload) // self.p.autoFragmentSize")
# The UTF-8 test table builds invalid byte sequences octet by octet.
U = C + "case6_x_x.py"
edit(U, '   s = ""\n   for i in range(0x80, 0xbf):\n      s += chr(i)\n',
     '   s = b""\n   for i in range(0x80, 0xbf):\n      s += bytes((i,))\n')
edit(U, "      s = ''\n      for i in range(mm[0], mm[1]):\n         s += chr(i)\n         s += chr(0x20)\n",
     "      s = b''\n      for i in range(mm[0], mm[1]):\n         s += bytes((i, 0x20))\n")
edit(U, "''.join(k)", "b''.join(k)")
edit(U, ".tostring()", ".tobytes()", 6)
# zope's class advice (implements() in a class body) is Python 2 only: use the decorator.
P = C + "case9_9_1.py"
edit(P, "from zope.interface import implements\n", "from zope.interface import implementer\n")
edit(P, "\nclass FrameProducer:\n\n   implements(interfaces.IPushProducer)\n",
     "\n@implementer(interfaces.IPushProducer)\nclass FrameProducer:\n")

# 7. autobahn 0.10.9 itself runs on Python 3 except for two spots the suite reaches.
# wstest's serializer mode imports this test module at start-up; unittest2 is Python 2's.
edit("autobahn/wamp/test/test_serializer.py", "import unittest2 as unittest", "import unittest")
# Frames with payload_len set (cases 9.*) repeat the payload a whole number of times.
edit("autobahn/websocket/protocol.py", "range(payload_len / len(payload))",
     "range(payload_len // len(payload))")
print("port: done")
