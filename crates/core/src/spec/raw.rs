//! The pipeline file as written: serde structs that keep every value's span, so validation can
//! point back into the source.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The file as written, before validation. Spans point back into the source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub(super) pipeline: Spanned<RawPipeline>,
    pub(super) warehouse: Option<Spanned<RawWarehouse>>,
    pub(super) state: Option<RawState>,
    pub(super) server: Option<RawServer>,
    #[serde(default)]
    pub(super) phase: Vec<Spanned<RawPhase>>,
    pub(super) healing: Option<RawHealing>,
    pub(super) alerts: Option<RawAlerts>,
    pub(super) report: Option<Spanned<RawReport>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReport {
    pub(super) period: Option<Spanned<String>>,
    pub(super) season_start: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) name: Spanned<String>,
    pub(super) start: Spanned<String>,
    pub(super) calendar: Option<Spanned<RawSource>>,
    pub(super) description: Option<String>,
    pub(super) due: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWarehouse {
    pub(super) url: Spanned<String>,
    #[serde(default)]
    pub(super) attach: BTreeMap<String, Spanned<String>>,
    pub(super) maximum_bytes_billed: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) url: Option<Spanned<String>>,
    pub(super) sync: Option<Spanned<String>>,
    pub(super) outage: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
}

/// Every key any source-like table may hold; which are allowed depends on the table, checked
/// in validation so the message can say "`files` is not allowed in `expect`".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) sql: Option<Spanned<String>>,
    pub(super) sql_file: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) files: Option<Spanned<String>>,
    pub(super) http: Option<Spanned<RawHttp>>,
    pub(super) min: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) url: Spanned<String>,
    pub(super) method: Option<Spanned<String>>,
    pub(super) body: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) token_command: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPhase {
    pub(super) id: Spanned<i64>,
    pub(super) name: Spanned<String>,
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) needs: Vec<Spanned<RawNeed>>,
    pub(super) run: Option<Spanned<RawSource>>,
    pub(super) batch_days: Option<Spanned<i64>>,
    pub(super) check: Option<Spanned<RawSource>>,
    pub(super) expect: Option<Spanned<RawSource>>,
    pub(super) rollback: Option<Spanned<RawSource>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) due: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawNeed {
    Id(i64),
    Name(String),
    Table(RawNeedTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNeedTable {
    pub(super) phase: RawPhaseRef,
    #[serde(default)]
    pub(super) lookback_days: i64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPhaseRef {
    Id(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealing {
    pub(super) scan: Option<Spanned<String>>,
    pub(super) lookback: Option<Spanned<String>>,
    pub(super) auto_heal_max_age: Option<Spanned<String>>,
    pub(super) max_attempts: Option<Spanned<i64>>,
    pub(super) realert_after: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub(super) slack_webhook_env: Option<String>,
    pub(super) webhook_url_env: Option<String>,
    pub(super) email: Option<Spanned<RawEmail>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmail {
    pub(super) smtp: String,
    pub(super) from: String,
    pub(super) to: Vec<String>,
}
