//! The pure model of gapless: what a pipeline is, which cells exist and what state they are in,
//! and what a backfill must do.
//!
//! - [`spec`]: `gapless.toml` parsed into a validated [`spec::Spec`], with every error collected
//!   as a [`diagnostic::Diagnostic`] that points at the file.
//! - [`dates`]: strict ISO dates, inclusive date ranges and durations.
//! - [`cells`]: observed counts and expectations turned into cell states
//!   ([`cells::CellState`]), the phase × date matrix.
//! - [`plan`]: the planner, a pure function from spec + observed states + request to tasks.
//! - [`reblock`]: after a failure mid-run, the pending cells it blocks and how their tasks
//!   split so the rest still runs.
//! - [`select`]: the `--phases` list.
//! - [`policy`]: retry backoff.
//! - [`render`]: human renderings of status matrices and plans (strings in, strings out).
//! - [`report`]: the completeness report per phase and period (`[report] period`).
//! - [`sql`]: user SQL split into statements, with `:start`/`:end`/`:date` turned into bound
//!   positional parameters (checked when the pipeline file is validated).
//!
//! This crate does no I/O, reads no clock and has no async runtime: the adapters (`store`,
//! `connect`, `runtime`) run probes and hand the results in. CI checks it with `cargo tree`.

pub mod cells;
pub mod dates;
pub mod diagnostic;
pub mod gaps;
pub mod plan;
pub mod policy;
pub mod reblock;
pub mod render;
pub mod report;
pub mod select;
pub mod spec;
pub mod sql;
pub mod template;
