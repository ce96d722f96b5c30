//! End-to-end tests of the `gapless` binary: real processes, real SQLite (and PostgreSQL when
//! `GAPLESS_TEST_PG_URL` is set), a real HTTP server on loopback.

#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on anything unexpected"
)]

mod backends;
mod backfill;
mod bigquery;
mod blast;
mod buckets;
mod checks;
mod crash;
mod dashboard;
mod demo;
mod due;
mod front;
mod nodes;
mod ordering;
mod outage;
mod owners;
mod ranges;
mod serve;
mod transports;
mod util;
