"""Run the Autobahn|Testsuite fuzzingclient against a WebSocket echo server and check the
results against tools/autobahn/expected.txt. Runs inside the venv setup.sh builds.

  client.py --count-cases                       smoke test of the port (setup.sh)
  client.py --report DIR HOST PORT [CASE ...]   run the cases (default: every case listed
                                                in expected.txt) and check them

A case passes when its behaviour and its closing behaviour are each at least as good as
expected.txt says: OK > NON-STRICT; INFORMATIONAL is what it is (the suite passes no
judgement). FAILED, UNIMPLEMENTED, anything else, or a case that did not run, fails.
Prints one summary line, "autobahn: OK=.. NON-STRICT=.. INFORMATIONAL=.. UNIMPLEMENTED=..
FAILED=.. MISSING=..", then every case that did not pass. Exit status 0 when all passed.
"""

import argparse
import json
import os
import sys

import txaio

# autobahn 0.10.9 predates txaio's explicit framework choice; the fuzzingclient is Twisted.
txaio.use_twisted()

from autobahntestsuite import case as suite_cases  # noqa: E402 (after the framework choice)
from autobahntestsuite.caseset import CaseSet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = "corelay"
RANK = {"OK": 0, "NON-STRICT": 1}  # lower is better; INFORMATIONAL only equals itself


def case_set():
    return CaseSet(suite_cases.CaseSetname, suite_cases.CaseBasename, suite_cases.Cases,
                   suite_cases.CaseCategories, suite_cases.CaseSubCategories)


def load_expected():
    """{case id: (behaviour, closing behaviour)} in file order."""
    expected = {}
    with open(os.path.join(HERE, "expected.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if line:
                case_id, behavior, close = line
                expected[case_id] = (behavior, close)
    return expected


def acceptable(got, want):
    if want == "INFORMATIONAL":
        return got == "INFORMATIONAL"
    return got in RANK and RANK[got] <= RANK[want]


def run(report, host, port, cases):
    from twisted.internet import reactor
    from autobahntestsuite import fuzzing

    spec = {
        "outdir": report,
        "servers": [{"agent": AGENT, "url": "ws://%s:%d" % (host, port)}],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    # The factory connects (case after case) and stops the reactor after the last report.
    fuzzing.startClient(spec)
    reactor.run()


def check(report, cases, expected):
    index = os.path.join(report, "index.json")
    results = {}
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            results = json.load(f).get(AGENT, {})
    counts = dict.fromkeys(("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"), 0)
    bad, missing, better = [], [], []
    for case_id in cases:
        r = results.get(case_id)
        if r is None:
            missing.append(case_id)
            continue
        got = (r["behavior"], r["behaviorClose"])
        counts[got[0] if got[0] in counts else "FAILED"] += 1
        want = expected.get(case_id)
        if want is None:
            bad.append("%s %s/%s (not in expected.txt)" % (case_id, *got))
        elif not (acceptable(got[0], want[0]) and acceptable(got[1], want[1])):
            bad.append("%s %s/%s (expected %s/%s)" % (case_id, *got, *want))
        elif got != want:
            better.append("%s %s/%s (expected %s/%s)" % (case_id, *got, *want))
    print("autobahn: " + " ".join("%s=%d" % kv for kv in counts.items())
          + " MISSING=%d" % len(missing))
    for line in bad:
        print("autobahn: did not pass: " + line)
    if missing:
        print("autobahn: did not run: " + " ".join(missing))
    for line in better:
        print("autobahn: better than expected (update expected.txt): " + line)
    print("autobahn: report " + os.path.join(report, "index.html"))
    return not bad and not missing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count-cases", action="store_true")
    ap.add_argument("--report")
    ap.add_argument("host", nargs="?")
    ap.add_argument("port", nargs="?", type=int)
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    if a.count_cases:
        n = len(case_set().parseSpecCases({"cases": ["*"]}))
        print("autobahn-setup: %d cases load" % n)
        return 0 if n >= 500 else 1  # 1.* - 13.* hold 517
    if not (a.report and a.host and a.port):
        ap.error("--report DIR HOST PORT required")
    expected = load_expected()
    # Patterns such as "5.*" are expanded by the suite itself, in its case order.
    cases = case_set().parseSpecCases({"cases": a.cases or list(expected)})
    if not cases:
        ap.error("no case matches %s" % a.cases)
    run(a.report, a.host, a.port, cases)
    return 0 if check(a.report, cases, expected) else 1


if __name__ == "__main__":
    sys.exit(main())
