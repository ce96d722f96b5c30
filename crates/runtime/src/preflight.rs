//! Pre-flight: before the first task runs (and in `gapless check`), everything a run will touch
//! must answer: the warehouse, every runner's and probe's program, and every SQL text, prepared
//! on the warehouse without running.

use gapless_connect::{SchemaChanges, Warehouse, WarehouseError};
use gapless_core::spec::{Rollback, Runner, Source};

use crate::context::Context;

/// One thing that will not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What it is about (`phase 3 run`, `warehouse`).
    pub subject: String,
    /// What is wrong.
    pub message: String,
}

/// What was checked, for `gapless check` to print.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Things that answered.
    pub ok: Vec<String>,
    /// Things that did not.
    pub problems: Vec<Problem>,
    /// SQL statements that could not be prepared only because they use a table or column the
    /// pipeline's own SQL creates: running probes now would fail on them too.
    pub deferred: usize,
}

/// Checks the warehouse, every program and every SQL text of the pipeline.
///
/// Every SQL text (calendar, check, expect, run, rollback; inline or `sql_file`) is prepared
/// against the warehouse without running ([`Warehouse::prepare_script`]), so a syntax error or
/// a missing table is a problem named by phase and key. A statement that uses a table or
/// column the pipeline's own SQL creates is left to the run (see [`SchemaChanges`]).
pub async fn check(context: &Context) -> Report {
    let mut report = Report::default();
    let warehouse = match &context.warehouse {
        Some(warehouse) => match warehouse.ping().await {
            Ok(()) => {
                report.ok.push("warehouse answers".to_owned());
                Some(warehouse)
            }
            Err(error) => {
                report.problems.push(Problem {
                    subject: "warehouse".to_owned(),
                    message: error_chain(&error),
                });
                None
            }
        },
        None => None,
    };
    let program = |subject: String, argv: &[String], report: &mut Report| {
        let Some(name) = argv.first() else { return };
        match gapless_connect::resolve_program(name, &context.base_dir) {
            Ok(path) => report
                .ok
                .push(format!("{subject}: `{}` found", path.display())),
            Err(error) => report.problems.push(Problem {
                subject,
                message: error_chain(&error),
            }),
        }
    };
    // Every SQL text with its subject, prepared below once all are known.
    let mut texts: Vec<(String, &str)> = Vec::new();
    match &context.spec.calendar {
        Some(Source::Command(argv)) => program("calendar".to_owned(), argv, &mut report),
        Some(Source::Sql(text)) => texts.push(("calendar.sql".to_owned(), text)),
        Some(Source::Files(_)) | None => {}
    }
    for phase in &context.spec.phases {
        let label = |what: &str| format!("phase {} `{}` {what}", phase.id, phase.name);
        let sources = [
            Some(("check", &phase.check)),
            phase.expect.source.as_ref().map(|s| ("expect", s)),
        ];
        for (what, source) in sources.into_iter().flatten() {
            match source {
                Source::Command(argv) => program(label(what), argv, &mut report),
                Source::Sql(text) => texts.push((label(&format!("{what}.sql")), text)),
                Source::Files(_) => {}
            }
        }
        match &phase.run {
            Some(Runner::Command(argv)) => program(label("run"), argv, &mut report),
            Some(Runner::Sql(text)) => texts.push((label("run.sql"), text)),
            Some(Runner::Http(http)) => {
                if let Some(argv) = &http.token_command {
                    program(label("run token_command"), argv, &mut report);
                }
            }
            None => {}
        }
        match &phase.rollback {
            Some(Rollback::Command(argv)) => program(label("rollback"), argv, &mut report),
            Some(Rollback::Sql(text)) => texts.push((label("rollback.sql"), text)),
            None => {}
        }
    }
    if let Some(warehouse) = warehouse {
        prepare_all(warehouse, &texts, &mut report).await;
    }
    if context.warehouse.is_none() && context.spec.uses_sql() {
        report.problems.push(Problem {
            subject: "warehouse".to_owned(),
            message: "the pipeline uses SQL but no warehouse is configured".to_owned(),
        });
    }
    report
}

/// Prepares every SQL text on the warehouse: one problem per text that does not prepare, and
/// one `ok` line for all the rest.
async fn prepare_all(warehouse: &Warehouse, texts: &[(String, &str)], report: &mut Report) {
    if texts.is_empty() {
        return;
    }
    let mut changes = SchemaChanges::default();
    for (_, text) in texts {
        changes.scan(text, warehouse.dialect());
    }
    let (mut prepared, mut deferred) = (0usize, 0usize);
    for (subject, text) in texts {
        match warehouse.prepare_script(text, &changes).await {
            Ok(outcome) => {
                prepared += 1;
                deferred += outcome.deferred;
            }
            Err(error) => report.problems.push(Problem {
                subject: subject.clone(),
                message: prepare_message(&error),
            }),
        }
    }
    report.deferred += deferred;
    if prepared > 0 {
        let mut line = format!(
            "{prepared} SQL text{} prepared",
            if prepared == 1 { "" } else { "s" }
        );
        if deferred > 0 {
            line.push_str(&format!(
                " ({deferred} statement{} left to the run: {} a table or column the pipeline creates)",
                if deferred == 1 { "" } else { "s" },
                if deferred == 1 { "it uses" } else { "they use" },
            ));
        }
        report.ok.push(line);
    }
}

/// What is wrong with a SQL text: the database's own words, after the statement's place when
/// the text holds more than one.
fn prepare_message(error: &WarehouseError) -> String {
    match error {
        WarehouseError::Prepare {
            index,
            total,
            statement,
            source,
        } => {
            let cause = source.message();
            if *total == 1 {
                cause
            } else {
                format!("statement {index} of {total} (`{statement}`): {cause}")
            }
        }
        WarehouseError::Sql { source, .. } => source.to_string(),
        other => error_chain(other),
    }
}

/// An error and its causes on one line, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
