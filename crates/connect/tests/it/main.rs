//! Integration tests of gapless-connect against real processes, SQLite files, PostgreSQL (when
//! `GAPLESS_TEST_PG_URL` is set), the BigQuery emulator (`bqemulator`, when installed) and an
//! HTTP server on loopback.

#![allow(clippy::unwrap_used)]

mod bigquery;
mod command;
mod gated;
mod http;
mod lifetime;
mod probes;
mod support;
mod warehouse;

/// The runtime spawns these calls on a multi-threaded runtime: their futures must be `Send`.
/// Compiling is the test.
#[test]
fn futures_are_send() {
    use std::path::Path;
    use std::time::Duration;

    use gapless_connect::{
        CommandSpec, HttpSpec, RunOptions, ScriptParams, Warehouse, command_counts,
        end_process_group, file_counts, run_command, run_command_with, run_http,
    };

    fn is_send<T: Send>(_: &T) {}
    #[expect(dead_code, reason = "only type-checked")]
    fn check(
        warehouse: &Warehouse,
        command: &CommandSpec,
        http: &HttpSpec,
        client: &reqwest::Client,
        params: &ScriptParams,
    ) {
        let day = params.start;
        is_send(&Warehouse::connect("", &[], Path::new(""), Duration::ZERO));
        is_send(&warehouse.counts("", day, day));
        is_send(&warehouse.dates("", day, day));
        is_send(&warehouse.scalar(""));
        is_send(&warehouse.ping());
        is_send(&warehouse.execute_script("", params));
        is_send(
            &warehouse.execute_script_gated("", params, Duration::ZERO, &[""], |counts| {
                if counts.is_empty() { Err(()) } else { Ok(()) }
            }),
        );
        is_send(&command_counts(
            &[],
            Path::new(""),
            &[],
            day,
            day,
            Duration::ZERO,
        ));
        is_send(&file_counts("", Path::new(""), day, day));
        is_send(&run_command(command));
        is_send(&run_command_with(command, &RunOptions::default()));
        is_send(&end_process_group(2, Duration::ZERO));
        is_send(&run_http(http, client));
    }
}
