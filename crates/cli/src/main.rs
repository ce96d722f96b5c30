//! The `gapless` binary: parses the command line, loads settings and the pipeline file, wires
//! the adapters together and maps outcomes to exit codes (SPEC.md: 0 complete, 1 failed or
//! blocked cells, 2 usage or pipeline-file error, 3 infrastructure, 130 interrupted).

mod cli;
mod commands;
mod exit;
mod progress;
mod settings;
mod signals;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::exit::{Exit, UsageError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    // reqwest is built without a default crypto provider; install ring once, here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One scheduler thread: the control plane waits on processes, sockets and timers, and a
    // wake-up on the same thread costs ~0.3 µs where a cross-thread one costs ~23 µs (measured,
    // docs/ARCHITECTURE.md). Blocking work (warehouse SQL, file probes) runs on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {error}"
            );
            return ExitCode::from(3);
        }
    };
    // Run as a spawned task, not as `block_on`'s own future: waking `block_on`'s future always
    // goes through the I/O driver (an eventfd write and an extra epoll round), even from the
    // runtime's own thread, where a spawned task is woken by a push onto the local run queue.
    let result = runtime.block_on(async {
        tokio::spawn(commands::run(cli))
            .await
            .unwrap_or_else(|join_error| Err(anyhow::anyhow!("gapless panicked: {join_error}")))
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            // A closed pipe (`gapless status | head`) is not an error.
            if error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let code = if let Some(usage) = error.downcast_ref::<UsageError>() {
                let _ = writeln!(std::io::stderr(), "{}", usage.render());
                Exit::Usage
            } else {
                let mut out = format!("error: {error}");
                let mut previous = error.to_string();
                for cause in error.chain().skip(1) {
                    // Some libraries (sqlx) repeat their source in their own message: print
                    // each piece of text once.
                    let text = cause.to_string();
                    if !previous.contains(&text) {
                        out.push_str(&format!("\n  Caused by: {text}"));
                    }
                    previous = text;
                }
                let _ = writeln!(std::io::stderr(), "{out}");
                Exit::Infrastructure
            };
            code.into()
        }
    }
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "gapless=error",
        (false, 0) => "gapless=warn",
        (false, 1) => "gapless=info",
        (false, _) => "gapless=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
