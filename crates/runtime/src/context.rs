//! A loaded pipeline: the validated spec, where it lives, and its warehouse.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gapless_connect::Warehouse;
use gapless_core::dates::{Date, DateTime};
use gapless_core::spec::Spec;

/// How long one probe (a check, expect or calendar query or command) may take. SQL runners and
/// rollbacks are not bound by it: they get their phase's `timeout`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything the runtime needs about one pipeline.
#[derive(Debug, Clone)]
pub struct Context {
    /// The validated spec.
    pub spec: Arc<Spec>,
    /// The pipeline file's directory: commands run here and relative paths start here.
    pub base_dir: PathBuf,
    /// The warehouse, when the spec uses SQL. Its own timeout is `probe_timeout`; runners and
    /// rollbacks pass their phase's `timeout` with each call.
    pub warehouse: Option<Warehouse>,
    /// Where logs of every attempt go (`<state dir>/logs`).
    pub log_dir: PathBuf,
    /// Today: the date of [`Context::now`], for expectations and the default ends of ranges.
    pub today: Date,
    /// The moment (UTC) cells are classified at: decides which are `not_due`, and gap ages.
    pub now: DateTime,
    /// Timeout for probes (each query or probe command): [`PROBE_TIMEOUT`].
    pub probe_timeout: Duration,
    /// Shared HTTP client for HTTP runners; `None` when no phase has one (building a client
    /// loads the system's CA certificates, a few milliseconds every command would pay).
    pub http: Option<reqwest::Client>,
}

/// Why the context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The warehouse did not answer.
    #[error("cannot connect to the warehouse")]
    Warehouse(#[source] gapless_connect::WarehouseError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
}

impl Context {
    /// Connects to the warehouse (when the spec has one) and prepares the rest. A SQLite
    /// warehouse file or `attach` file that does not exist is an error naming its path: it is
    /// never created empty ([`Warehouse::open`]).
    pub async fn connect(
        spec: Spec,
        base_dir: &Path,
        log_dir: PathBuf,
        now: DateTime,
    ) -> Result<Self, ContextError> {
        let probe_timeout = PROBE_TIMEOUT;
        let uses_http = spec
            .phases
            .iter()
            .any(|phase| matches!(phase.run, Some(gapless_core::spec::Runner::Http(_))));
        let warehouse = match &spec.warehouse {
            Some(w) => {
                let attach: Vec<(String, PathBuf)> = w
                    .attach
                    .iter()
                    .map(|(name, path)| (name.clone(), PathBuf::from(path)))
                    .collect();
                Some(
                    Warehouse::open(&w.url, &attach, base_dir, probe_timeout)
                        .await
                        .and_then(|warehouse| {
                            warehouse.with_maximum_bytes_billed(w.maximum_bytes_billed)
                        })
                        .map_err(ContextError::Warehouse)?,
                )
            }
            None => None,
        };
        Ok(Self {
            spec: Arc::new(spec),
            base_dir: base_dir.to_path_buf(),
            warehouse,
            log_dir,
            today: now.date(),
            now,
            probe_timeout,
            http: if uses_http {
                Some(gapless_connect::http_client().map_err(ContextError::Http)?)
            } else {
                None
            },
        })
    }
}
