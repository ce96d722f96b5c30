//! Pre-flight: before the first task runs (and in `gapless check`), everything a run will touch
//! must answer: the warehouse, every runner's and probe's program, every SQL text's parameters.

use gapless_connect::named;
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
}

/// Checks the warehouse, every program and every SQL text of the pipeline.
pub async fn check(context: &Context) -> Report {
    let mut report = Report::default();
    let dialect = match &context.warehouse {
        Some(warehouse) => {
            match warehouse.ping().await {
                Ok(()) => report.ok.push("warehouse answers".to_owned()),
                Err(error) => report.problems.push(Problem {
                    subject: "warehouse".to_owned(),
                    message: error_chain(&error),
                }),
            }
            Some(warehouse.dialect())
        }
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
    let sql = |subject: String, text: &str, report: &mut Report| {
        let Some(dialect) = dialect else { return };
        if let Err(error) = named::prepare(text, dialect) {
            report.problems.push(Problem {
                subject,
                message: error.to_string(),
            });
        }
    };
    if let Some(Source::Command(argv)) = &context.spec.calendar {
        program("calendar".to_owned(), argv, &mut report);
    }
    if let Some(Source::Sql(text)) = &context.spec.calendar {
        sql("calendar".to_owned(), text, &mut report);
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
                Source::Sql(text) => sql(label(what), text, &mut report),
                Source::Files(_) => {}
            }
        }
        match &phase.run {
            Some(Runner::Command(argv)) => program(label("run"), argv, &mut report),
            Some(Runner::Sql(text)) => sql(label("run"), text, &mut report),
            Some(Runner::Http(http)) => {
                if let Some(argv) = &http.token_command {
                    program(label("run token_command"), argv, &mut report);
                }
            }
            None => {}
        }
        match &phase.rollback {
            Some(Rollback::Command(argv)) => program(label("rollback"), argv, &mut report),
            Some(Rollback::Sql(text)) => sql(label("rollback"), text, &mut report),
            None => {}
        }
    }
    if dialect.is_none() && context.spec.uses_sql() {
        report.problems.push(Problem {
            subject: "warehouse".to_owned(),
            message: "the pipeline uses SQL but no warehouse is configured".to_owned(),
        });
    }
    report
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
