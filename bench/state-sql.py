#!/usr/bin/env python3
"""The SQLite state store's per-task SQL, timed on its own, for the schema choices it depends on.

Usage: python3 bench/state-sql.py [rounds] [tasks]   (defaults 5 and 3,000)

Each variant builds a fresh state file from the embedded migrations
(crates/store/migrations/sqlite), creates one run of `tasks` single-day tasks in one transaction,
then completes them one by one as the executor does with `--jobs 1`: per task one transaction
that completes the task, its cell and its event, and claims the next task. WAL,
`synchronous=NORMAL`, foreign keys on, as the store runs. Variants:

- `v3, 4 KiB`: schema 3 with SQLite's default page size (the state store before session 8);
- `v3, 1 KiB`: the same schema with 1 KiB pages;
- `v4, 1 KiB`: schema 4 (the state checks as OR chains instead of IN lists);
- `v4, 1 KiB, no RETURNING`: and the claim reads its lease with a SELECT, as the store does now.

Python's sqlite3 adds its own cost per statement, the same in every variant: read the
differences, not the absolute figures. Rounds alternate the variants.
"""

import datetime
import os
import statistics
import sqlite3
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIGRATIONS = os.path.join(ROOT, "crates", "store", "migrations", "sqlite")

COMPLETE_TASK = (
    "UPDATE tasks SET state = 'complete', lease_epoch = lease_epoch + 1, lease_owner = NULL, "
    "lease_expires_at = NULL, finished_at = ?3, counts = ?4, error = NULL "
    "WHERE id = ?1 AND state = 'running' AND lease_epoch = ?2"
)
COMPLETE_CELLS = (
    "UPDATE run_cells SET state = 'complete', completed_at = ?2 "
    "WHERE task_id = ?1 AND state = 'pending'"
)
INSERT_EVENTS = (
    "INSERT INTO events (phase, date, status, source, run_id, created_at) "
    "SELECT phase, date, 'complete', ?3, run_id, ?2 FROM run_cells "
    "WHERE task_id = ?1 AND state = 'complete' AND completed_at = ?2"
)
CLAIM = (
    "UPDATE tasks SET state = 'running', attempt = attempt + 1, lease_epoch = lease_epoch + 1, "
    "lease_owner = ?3, lease_expires_at = ?4, started_at = ?5, not_before = NULL "
    "WHERE id = ?1 AND state = 'pending' AND lease_epoch = ?2 "
    "AND (not_before IS NULL OR not_before <= ?5)"
)
SELECT_LEASE = "SELECT lease_epoch, attempt FROM tasks WHERE id = ?1"

VARIANTS = [
    ("v3, 4 KiB", 3, 4096, True),
    ("v3, 1 KiB", 3, 1024, True),
    ("v4, 1 KiB", 4, 1024, True),
    ("v4, 1 KiB, no RETURNING", 4, 1024, False),
]


def migrations(upto):
    names = sorted(n for n in os.listdir(MIGRATIONS) if n.endswith(".sql"))
    return [open(os.path.join(MIGRATIONS, n)).read() for n in names if int(n[:4]) <= upto]


def fresh_store(path, version, page_size):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size = {page_size}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for migration in migrations(version):
        db.execute("BEGIN IMMEDIATE")
        for statement in split(migration):
            db.execute(statement)
        db.execute("COMMIT")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def split(script):
    """The statements of a migration (they hold no `;` inside literals)."""
    body = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def run(variant, tasks, directory):
    name, version, page_size, returning = variant
    path = os.path.join(directory, f"{version}-{page_size}-{returning}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = fresh_store(path, version, page_size)
    first = datetime.date(2020, 1, 1)
    dates = [(first + datetime.timedelta(days=i)).isoformat() for i in range(tasks)]

    started = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "INSERT INTO runs (id, seq, kind, pipeline, request, state, created_at, updated_at) "
        "VALUES ('r', 1, 'backfill', 'bench', '{}', 'running', 0, 0)"
    )
    ids = []
    for date in dates:
        cursor = db.execute(
            "INSERT INTO tasks (run_id, phase, start_date, end_date, state) "
            "VALUES ('r', 1, ?1, ?1, 'pending')",
            (date,),
        )
        ids.append(cursor.lastrowid)
        db.execute(
            "INSERT INTO run_cells (run_id, phase, date, task_id, state) "
            "VALUES ('r', 1, ?1, ?2, 'pending')",
            (date, cursor.lastrowid),
        )
    db.execute("COMMIT")
    create = time.perf_counter() - started

    now = 1_700_000_000_000
    claim = CLAIM + (" RETURNING lease_epoch, attempt" if returning else "")

    def claim_task(task_id):
        values = (task_id, 0, "bench", now + 60_000, now)
        if returning:
            return db.execute(claim, values).fetchone()
        if db.execute(claim, values).rowcount != 1:
            return None
        return db.execute(SELECT_LEASE, (task_id,)).fetchone()

    db.execute("BEGIN IMMEDIATE")
    lease = claim_task(ids[0])
    db.execute("COMMIT")
    started = time.perf_counter()
    for index, task_id in enumerate(ids):
        db.execute("BEGIN IMMEDIATE")
        db.execute(COMPLETE_TASK, (task_id, lease[0], now, '{"d":[1,1]}'))
        db.execute(COMPLETE_CELLS, (task_id, now))
        db.execute(INSERT_EVENTS, (task_id, now, "backfill"))
        if index + 1 < len(ids):
            lease = claim_task(ids[index + 1])
        db.execute("COMMIT")
    complete = time.perf_counter() - started
    done = db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'complete'").fetchone()[0]
    db.close()
    if done != tasks:
        sys.exit(f"{name}: {done} of {tasks} tasks complete")
    return create / tasks * 1e6, complete / tasks * 1e6


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    results = {variant[0]: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(rounds):
            for variant in VARIANTS:
                results[variant[0]].append(run(variant, tasks, directory))
    print(f"{tasks} tasks, {rounds} rounds; µs per task, median (range)")
    print()
    print("| variant | create the run | complete and claim |")
    print("| --- | ---: | ---: |")
    for name, values in results.items():
        creates, completes = zip(*values)
        cell = lambda xs: f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"
        print(f"| {name} | {cell(creates)} | {cell(completes)} |")


if __name__ == "__main__":
    main()
