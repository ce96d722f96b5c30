//! No pipeline file, however malformed, makes gapless panic: arbitrary text, and near-valid
//! pipeline files with random keys, values and types, go through the entry point the CLI uses
//! (`spec::parse`, then rendering the diagnostics), and files that validate are planned over a
//! few days with no observations, as `gapless plan` would.

use std::collections::{BTreeSet, HashMap};

use gapless_core::cells::{Observations, classify};
use gapless_core::dates::{DateRange, add_days, midday};
use gapless_core::diagnostic::render_all;
use gapless_core::plan::{Request, plan};
use gapless_core::spec::{FileSource, parse};
use proptest::prelude::*;
use toml::{Table, Value};

/// Every `sql_file` reads as the same generated text.
struct AnyFile(String);

impl FileSource for AnyFile {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        if relative_path.contains("missing") {
            Err(format!(
                "{relative_path}: No such file or directory (os error 2)"
            ))
        } else {
            Ok(self.0.clone())
        }
    }
}

/// What the CLI does with a pipeline file, up to planning; must return, never panic.
fn check_and_plan(source: &str, files: &AnyFile) {
    let spec = match parse(source, files) {
        Ok(spec) => spec,
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            let rendered = render_all(&diagnostics, "dir/gapless.toml", source);
            assert!(rendered.contains("error"));
            return;
        }
    };
    let end = add_days(spec.start, 3);
    let Ok(range) = DateRange::new(spec.start, end) else {
        return;
    };
    let observations = Observations {
        range: range.extend_back(spec.max_total_lookback()),
        calendar: None,
        phases: HashMap::new(),
    };
    let matrix = classify(&spec, &observations, midday(end));
    let request = Request {
        range,
        phases: spec.phases.iter().map(|p| p.id).collect::<BTreeSet<_>>(),
        force: false,
    };
    // Ok or a typed error: both are answers.
    let _answer = plan(&spec, &matrix, &request);
}

fn huge_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..40,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::from(u32::MAX) + 1),
        Just(3_660),
        Just(3_661),
        Just(366),
        Just(65_535),
        Just(65_536),
        any::<i64>(),
    ]
}

/// SQL pieces that exercise the parameter scanner: parameters, quotes, comments, casts.
fn sql_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("SELECT d, COUNT(*) FROM t WHERE d BETWEEN :start AND :end GROUP BY d".to_owned()),
            Just(" :date ".to_owned()),
            Just(":ned".to_owned()),
            Just("'it''s :date'".to_owned()),
            Just("-- :date\n".to_owned()),
            Just("/* /* :start */".to_owned()),
            Just("$tag$ :end $tag$".to_owned()),
            Just("$$".to_owned()),
            Just("::date".to_owned()),
            Just("?1 @x $1".to_owned()),
            Just(";".to_owned()),
            Just("\\u00e9 é 日付 🦀".to_owned()),
            "\\PC{0,16}",
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,14}(ms|s|m|h|d)",
        "([0-9]{1,12}d){1,40}",
        "(9{12}d){220,300}",
        Just("0s".to_owned()),
        Just("7d".to_owned()),
        "\\PC{0,12}",
    ]
}

fn date_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2024-01-01".to_owned()),
        Just("0000-01-01".to_owned()),
        Just("9999-12-31".to_owned()),
        Just("2024-02-30".to_owned()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}",
        "\\PC{0,12}",
    ]
}

/// Any TOML value, nested a few levels (deeper nesting is generated apart).
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        huge_int().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        "\\PC{0,24}".prop_map(Value::String),
        sql_text().prop_map(Value::String),
        duration_text().prop_map(Value::String),
        Just(Value::String(
            "{date}/{start}/{end}/{phase}/{run_id}/{stat}".to_owned()
        )),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|map| Value::Table(map.into_iter().collect())),
        ]
    })
}

/// Keys gapless knows (anywhere) and a few it does not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "name",
            "needs",
            "phase",
            "lookback_days",
            "run",
            "check",
            "expect",
            "rollback",
            "sql",
            "sql_file",
            "command",
            "files",
            "http",
            "url",
            "method",
            "body",
            "headers",
            "token_command",
            "min",
            "batch_days",
            "retries",
            "timeout",
            "concurrency",
            "description",
            "calendar",
            "start",
            "scan",
            "lookback",
            "auto_heal_max_age",
            "max_attempts",
            "realert_after",
            "attach",
            "sync",
            "listen",
            "due",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
        "\\PC{1,6}",
    ]
}

/// A value of the type a key expects, mostly plausible, sometimes extreme.
fn plausible(key: &str) -> BoxedStrategy<Value> {
    match key {
        "id" | "batch_days" | "retries" | "concurrency" | "min" | "max_attempts"
        | "lookback_days" => huge_int().prop_map(Value::Integer).boxed(),
        "name" => prop_oneof!["[a-z][a-z0-9_-]{0,8}", "\\PC{0,10}"]
            .prop_map(Value::String)
            .boxed(),
        "timeout" | "lookback" | "auto_heal_max_age" | "realert_after" => {
            duration_text().prop_map(Value::String).boxed()
        }
        "start" => date_text().prop_map(Value::String).boxed(),
        "needs" => prop::collection::vec(
            prop_oneof![
                (1i64..6).prop_map(Value::Integer),
                "[a-z]{1,3}".prop_map(Value::String),
                (
                    prop_oneof![
                        (1i64..6).prop_map(Value::Integer),
                        huge_int().prop_map(Value::Integer)
                    ],
                    huge_int()
                )
                    .prop_map(|(phase, lookback)| {
                        let mut need = Table::new();
                        need.insert("phase".to_owned(), phase);
                        need.insert("lookback_days".to_owned(), Value::Integer(lookback));
                        Value::Table(need)
                    }),
            ],
            0..4,
        )
        .prop_map(Value::Array)
        .boxed(),
        "run" | "check" | "expect" | "rollback" | "calendar" => source_table().boxed(),
        _ => any_value().boxed(),
    }
}

/// A `run`/`check`/… table: one or two kinds, with plausible contents.
fn source_table() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        sql_text().prop_map(|sql| ("sql", Value::String(sql))),
        prop_oneof![Just("sql/x.sql"), Just("sql/missing.sql")]
            .prop_map(|path| ("sql_file", Value::String(path.to_owned()))),
        prop::collection::vec("\\PC{0,6}|\\{date\\}|\\{start\\}|echo", 0..4).prop_map(|argv| {
            (
                "command",
                Value::Array(argv.into_iter().map(Value::String).collect()),
            )
        }),
        prop_oneof![Just("landing/{date}/*.json"), Just("x/*"), Just("{date}")]
            .prop_map(|pattern| ("files", Value::String(pattern.to_owned()))),
        (
            "(https?://|ftp://)?[a-z{}]{0,6}(/\\{start\\})?",
            "\\PC{0,8}"
        )
            .prop_map(|(url, body)| {
                let mut http = Table::new();
                http.insert("url".to_owned(), Value::String(url));
                http.insert("body".to_owned(), Value::String(body));
                ("http", Value::Table(http))
            }),
        huge_int().prop_map(|min| ("min", Value::Integer(min))),
        any_value().prop_map(|value| ("sql", value)),
    ];
    prop::collection::vec(kind, 0..3).prop_map(|kinds| {
        Value::Table(
            kinds
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        )
    })
}

/// A table with `base` keys given plausible values, some dropped, and random keys added.
fn table(base: &'static [&'static str]) -> impl Strategy<Value = Table> {
    let known = base
        .iter()
        .map(|key| {
            (any::<u8>(), plausible(key)).prop_map(move |(keep, value)| {
                // Keep most keys; drop some so that required ones go missing too.
                (keep > 24).then(|| ((*key).to_owned(), value))
            })
        })
        .collect::<Vec<_>>();
    let extra = prop::collection::vec((key(), any::<u8>()), 0..3).prop_flat_map(|keys| {
        keys.into_iter()
            .map(|(key, choice)| {
                let value = if choice > 128 {
                    plausible(&key)
                } else {
                    any_value().boxed()
                };
                value.prop_map(move |value| (key.clone(), value))
            })
            .collect::<Vec<_>>()
    });
    (known, extra).prop_map(|(known, extra)| {
        let mut table: Table = known.into_iter().flatten().collect();
        for (key, value) in extra {
            table.insert(key, value);
        }
        table
    })
}

fn pipeline_file() -> impl Strategy<Value = String> {
    (
        table(&["name", "start", "calendar", "description"]),
        prop_oneof![
            Just("sqlite://warehouse.db"),
            Just("postgres://u:p@h/db"),
            Just("mysql://x"),
            Just("")
        ],
        prop::collection::vec(
            table(&[
                "id",
                "name",
                "needs",
                "run",
                "check",
                "expect",
                "rollback",
                "batch_days",
                "retries",
                "timeout",
                "concurrency",
            ]),
            0..5,
        ),
        prop::option::of(table(&[
            "scan",
            "lookback",
            "auto_heal_max_age",
            "max_attempts",
            "realert_after",
        ])),
        prop::option::of(table(&["sync", "url"])),
    )
        .prop_map(|(pipeline, warehouse_url, phases, healing, state)| {
            let mut document = Table::new();
            document.insert("pipeline".to_owned(), Value::Table(pipeline));
            if !warehouse_url.is_empty() {
                let mut warehouse = Table::new();
                warehouse.insert("url".to_owned(), Value::String(warehouse_url.to_owned()));
                document.insert("warehouse".to_owned(), Value::Table(warehouse));
            }
            document.insert(
                "phase".to_owned(),
                Value::Array(phases.into_iter().map(Value::Table).collect()),
            );
            if let Some(healing) = healing {
                document.insert("healing".to_owned(), Value::Table(healing));
            }
            if let Some(state) = state {
                document.insert("state".to_owned(), Value::Table(state));
            }
            toml::to_string(&document).unwrap_or_default()
        })
}

/// Pipeline files that mostly validate, at and around the bounds: phases chained by needs with
/// long lookbacks and self-dependencies, wide batches, SQL and command runners, calendars, and
/// start dates at the ends of the calendar, so that planning runs on them.
fn mostly_valid_pipeline_file() -> impl Strategy<Value = String> {
    let phase = (
        prop_oneof![60 => 1i64..=366, 1 => huge_int()],
        prop_oneof![60 => 0i64..=3_660, 1 => huge_int()],
        any::<prop::sample::Index>(),
        any::<bool>(),
        prop_oneof![
            16 => Just("run.command = [\"r\", \"{start}\", \"{end}\"]".to_owned()),
            16 => Just("run.sql = \"DELETE FROM t WHERE d BETWEEN :start AND :end\"".to_owned()),
            1 => Just("run.sql = \"INSERT INTO t SELECT :date\"".to_owned()),
            8 => Just("run.sql_file = \"sql/x.sql\"".to_owned()),
            8 => Just(String::new()),
        ],
        prop_oneof![
            Just("check.command = [\"c\", \"{start}\"]"),
            Just(
                "check.sql = \"SELECT d, COUNT(*) FROM t WHERE d BETWEEN :start AND :end GROUP BY d\""
            ),
            Just("check.files = \"landing/{date}/*.json\""),
            Just("check.sql_file = \"sql/x.sql\""),
        ],
        prop_oneof![30 => Just("1h".to_owned()), 10 => Just("7d".to_owned()), 1 => duration_text()],
        prop_oneof![60 => 0i64..3, 1 => huge_int()],
    );
    (
        prop_oneof![
            3 => Just("2024-01-01".to_owned()),
            2 => Just("9999-12-31".to_owned()),
            2 => Just("0000-01-01".to_owned()),
            1 => date_text(),
        ],
        prop::option::of(prop_oneof![
            Just("calendar.command = [\"cal\", \"{start}\"]"),
            Just("calendar.sql = \"SELECT d FROM games WHERE d BETWEEN :start AND :end\""),
        ]),
        prop::collection::vec(phase, 1..7),
    )
        .prop_map(|(start, calendar, phases)| {
            let mut source = format!(
                "[pipeline]\nname = \"edge\"\nstart = \"{start}\"\n{}\n\n[warehouse]\nurl = \"sqlite://w.db\"\n",
                calendar.unwrap_or_default()
            );
            for (i, (batch, lookback, target, own, run, check, timeout, retries)) in
                phases.into_iter().enumerate()
            {
                let id = i + 1;
                let needs = if own {
                    format!("{{ phase = {id}, lookback_days = {} }}", lookback.max(1))
                } else if id > 1 {
                    format!("{{ phase = {}, lookback_days = {lookback} }}", target.index(id - 1) + 1)
                } else {
                    String::new()
                };
                source.push_str(&format!(
                    "\n[[phase]]\nid = {id}\nname = \"p{id}\"\nneeds = [{needs}]\nbatch_days = {batch}\n{run}\n{check}\ntimeout = \"{timeout}\"\nretries = {retries}\n"
                ));
            }
            source
        })
}

/// Nesting far deeper than any pipeline file has.
fn deep_nesting() -> impl Strategy<Value = String> {
    (1usize..400, prop::bool::ANY, prop::bool::ANY).prop_map(|(depth, arrays, in_phase)| {
        let (open, close) = if arrays { ("[", "]") } else { ("{ a = ", " }") };
        let value = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        if in_phase {
            format!(
                "[pipeline]\nname = \"x\"\nstart = \"2024-01-01\"\n\n[[phase]]\nid = 1\nname = \"a\"\ncheck.command = [\"true\"]\nneeds = {value}\n"
            )
        } else {
            format!("[pipeline]\nname = {value}\nstart = \"2024-01-01\"\n")
        }
    })
}

/// Text made of TOML's punctuation and keys: mostly invalid, sometimes barely valid.
fn toml_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("[pipeline]\n"),
            Just("[[phase]]\n"),
            Just("[warehouse]\n"),
            Just("name = "),
            Just("id = "),
            Just("start = "),
            Just("check.sql = "),
            Just("needs = ["),
            Just("]"),
            Just("{"),
            Just("}"),
            Just("\""),
            Just("'''"),
            Just("\"\"\""),
            Just("\\"),
            Just("\n"),
            Just("="),
            Just(","),
            Just("9223372036854775808"),
            Just("-1"),
            Just("1e999"),
            Just("2024-01-01"),
            Just("é"),
            Just("\u{feff}"),
            Just("\r"),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 320, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(source in "\\PC{0,200}", sql in sql_text()) {
        check_and_plan(&source, &AnyFile(sql));
    }

    #[test]
    fn toml_soup_never_panics(source in toml_soup(), sql in sql_text()) {
        check_and_plan(&source, &AnyFile(sql));
    }

    #[test]
    fn near_valid_pipeline_files_never_panic(source in pipeline_file(), sql in sql_text()) {
        check_and_plan(&source, &AnyFile(sql));
    }

    #[test]
    fn mostly_valid_pipeline_files_never_panic(
        source in mostly_valid_pipeline_file(),
        sql in prop_oneof![
            12 => Just("SELECT d, COUNT(*) FROM t WHERE d BETWEEN :start AND :end GROUP BY d".to_owned()),
            1 => sql_text(),
        ],
    ) {
        check_and_plan(&source, &AnyFile(sql));
    }

    #[test]
    fn deep_nesting_never_panics(source in deep_nesting()) {
        check_and_plan(&source, &AnyFile(String::new()));
    }
}

/// Valid files at the edges of every bound plan without overflowing: the latest start date,
/// the longest lookbacks chained, the widest batches.
#[test]
fn extreme_valid_files_plan() {
    for start in ["9999-12-31", "0000-01-01", "2024-01-01"] {
        let mut source = format!(
            "[pipeline]\nname = \"edge\"\nstart = \"{start}\"\n\n[[phase]]\nid = 1\nname = \"p1\"\ncheck.command = [\"c\"]\nrun.command = [\"r\", \"{{start}}\"]\nbatch_days = 366\nneeds = [{{ phase = 1, lookback_days = 3660 }}]\ntimeout = \"7d\"\n"
        );
        for id in 2..=6 {
            source.push_str(&format!(
                "\n[[phase]]\nid = {id}\nname = \"p{id}\"\ncheck.command = [\"c\"]\nrun.command = [\"r\"]\nbatch_days = 366\nneeds = [{{ phase = {}, lookback_days = 3660 }}]\n",
                id - 1
            ));
        }
        let spec = parse(&source, &AnyFile(String::new())).unwrap_or_else(|diagnostics| {
            panic!("{}", render_all(&diagnostics, "gapless.toml", &source))
        });
        assert_eq!(spec.phases.len(), 6);
        check_and_plan(&source, &AnyFile(String::new()));
    }
}
