//! End-to-end tests of the `gapless` binary: real processes, real SQLite (and PostgreSQL when
//! `GAPLESS_TEST_PG_URL` is set), a real HTTP server on loopback.

mod backfill;
mod crash;
mod front;
mod util;
