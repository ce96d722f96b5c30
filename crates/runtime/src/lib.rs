//! gapless's runtime: probes the user's systems into cell states, runs plans with limits,
//! retries, validation gates, rollback and checkpoints, and resumes interrupted runs.
//!
//! - [`context::Context`]: one loaded pipeline with its warehouse connection and settings.
//! - [`observe`]: one probe per phase per range into [`gapless_core::cells::Observations`].
//! - [`preflight`]: what must answer before the first task runs.
//! - [`executor`]: runs tasks as soon as their needs are complete, checkpointing every
//!   transition in the state store.
//! - [`lifecycle`]: the run lifecycle that the CLI, `heal` and `serve` share: plan, persist,
//!   resume, execute and finish a run; scan for gaps.
//!
//! Depends on `gapless-core` for the model, `gapless-connect` for the user's systems and
//! `gapless-store` for state; never on the CLI or the server.

pub mod context;
pub mod executor;
pub mod heal;
pub mod lifecycle;
pub mod observe;
pub mod owner;
pub mod preflight;
