"""The daemon's memory: sqlite in WAL mode, so a restart neither orphans VMs nor asks twice.

Tables: ``nodes`` (one record per managed node, changed only through :meth:`Store.transition`,
which checks the one transition table), ``requests`` (Slurm's power-saving calls, written by
the short-lived ``vaf elastic resume|suspend|resume-fail`` and consumed by the daemon),
``meta`` (the failed-join streak, the squeeze flag, the last decision). WAL lets the entry
points write while the daemon reads; every write is one short transaction.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable

from vaf.elastic.engine import Record, Request, Streak
from vaf.elastic.states import check_transition

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL, vm_id INTEGER,
    cores INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '', requested_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL,
    at REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    def __init__(self, path: str):
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- records ---
    def records(self) -> list[Record]:
        rows = self.db.execute("SELECT name, state, since, vm_id, cores, reason, requested_at "
                               "FROM nodes ORDER BY name")
        return [Record(*row) for row in rows]

    def record(self, name: str) -> Record | None:
        row = self.db.execute("SELECT name, state, since, vm_id, cores, reason, requested_at "
                              "FROM nodes WHERE name = ?", (name,)).fetchone()
        return Record(*row) if row else None

    def transition(self, name: str, state: str, reason: str = "", vm_id: int | None = None,
                   cores: int = 1, now: float | None = None) -> None:
        """Move ``name`` to ``state`` (checked against the transition table), in one write."""
        now = time.time() if now is None else now
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            old = self.record(name)
            check_transition(name, old.state if old else None, state)
            if old is None or (old.state == "gone" and state != "gone"):
                self.db.execute(
                    "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, state, now, vm_id, cores, reason, now))
            elif old.state != state or vm_id is not None:
                self.db.execute(
                    "UPDATE nodes SET state = ?, since = ?, vm_id = COALESCE(?, vm_id), "
                    "reason = ? WHERE name = ?",
                    (state, now if old.state != state else old.since, vm_id, reason, name))

    def forget_gone(self, older_than: float) -> None:
        self.db.execute("DELETE FROM nodes WHERE state = 'gone' AND since < ?", (older_than,))

    # --- requests from Slurm's power-saving programs ---
    def add_requests(self, kind: str, names: Iterable[str], now: float | None = None) -> None:
        at = time.time() if now is None else now
        with self.db:
            self.db.executemany("INSERT INTO requests (kind, name, at) VALUES (?, ?, ?)",
                                [(kind, name, at) for name in names])

    def pending_requests(self) -> list[Request]:
        rows = self.db.execute("SELECT id, kind, name, at FROM requests WHERE done = 0 "
                               "ORDER BY id")
        return [Request(*row) for row in rows]

    def finish_requests(self, ids: Iterable[int]) -> None:
        with self.db:
            self.db.executemany("UPDATE requests SET done = 1 WHERE id = ?",
                                [(i,) for i in ids])
            self.db.execute("DELETE FROM requests WHERE done = 1 AND at < ?",
                            (time.time() - 86400,))

    # --- meta ---
    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def streak(self) -> Streak:
        return Streak(*self.get("streak", [0, 0.0, ""]))

    def put_streak(self, streak: Streak) -> None:
        self.put("streak", [streak.failures, streak.last_at, streak.last_reason])


def wake(settings) -> bool:
    """Nudge a running daemon (one datagram to its socket); False when none listens, which
    loses nothing: the daemon reads the pending requests when it starts."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"wake", settings.socket)
        return True
    except OSError:
        return False
