"""A deliberately broken backend for tests/sdk_backends.rs: the contract example, but it
commits past deferred requests (as if `defer` did not hold the commit point). A kill -9
while a request is deferred then loses it, and `corelay backend-check` must say FAIL."""

import runpy
import sys

from corelay_backend import backend


def commit_everything(self):
    for tx in self._txs:
        tx.flush()
    for rx in self._rxs:
        rx.commit_to(rx.head)


backend.Backend._flush_and_commit = commit_everything
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
