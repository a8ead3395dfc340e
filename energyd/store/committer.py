"""The store's committer process: `python -m energyd.store.committer STORE_PATH`.

Started and fed by `StoreWriter` through a pipe (stdin: pickled batches, stdout: one answer
each). It ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C in a terminal or systemd's stop reaches
the whole process group, and the daemon decides when to stop; the committer then commits
what it was sent and ends when its input does, also when the daemon is killed.
"""

from __future__ import annotations

import pickle
import signal
import sqlite3
import sys

from energyd.errors import StoreError
from energyd.store.samples import group, group_rows
from energyd.store.sqlite import Conflict, Store, corrupt


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if len(argv) != 1:
        print("usage: python -m energyd.store.committer STORE_PATH", file=sys.stderr)
        return 2
    batches, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    store = Store.open(argv[0])
    # Every series id it is sent was resolved by the daemon's own store, where it was
    # created and committed first (series are never deleted); the foreign-key lookup per
    # reading would cost a sixth of the commit's time to check what cannot be otherwise.
    store._read("PRAGMA foreign_keys=OFF")
    try:
        while True:
            try:
                columns, calls, polls = pickle.load(batches)
            except EOFError:
                return 0
            samples = group(*columns) + [s for rows in calls for s in group_rows(rows)]
            try:
                conflicts: list[Conflict] = []
                inserted = store.commit_samples(samples, polls, conflicts)
                per_device: dict[str, int] = {}
                for c in conflicts:
                    per_device[c.device] = per_device.get(c.device, 0) + 1
                answer: tuple[str, object] = ("ok", (inserted, per_device))
            except (sqlite3.Error, StoreError) as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                kind = ("full" if code == sqlite3.SQLITE_FULL else
                        "corrupt" if corrupt(exc) else "error")
                answer = (kind, f"{store.path}: cannot commit readings: {exc}")
            pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()
    finally:
        # no checkpoint: the daemon's own connection may be reading, and it checkpoints
        store.close(checkpoint=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
