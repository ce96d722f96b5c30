//! Integration tests of gapless-connect against real processes, SQLite files, PostgreSQL (when
//! `GAPLESS_TEST_PG_URL` is set) and an HTTP server on loopback.

#![allow(clippy::unwrap_used)]

mod command;
mod http;
mod probes;
mod support;
mod warehouse;
