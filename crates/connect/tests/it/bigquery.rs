//! The warehouse on BigQuery: the conformance scenarios of `warehouse.rs` and `gated.rs`
//! against the BigQuery emulator (`bqemulator`), then what only BigQuery has: credentials (a
//! service account's signed JWT exchanged at a token endpoint that checks it, a token cached,
//! refreshed when it expires and when the API refuses it), retried rate limits, job timeouts
//! and the byte limit.

use std::path::Path;
use std::time::{Duration, Instant};

use gapless_connect::{
    DatabaseError, Dialect, Prepared, Rows, ScriptParams, Warehouse, WarehouseError,
};
use gapless_testkit::bigquery::{ApiGate, BqEmulator, PROJECT, TokenEndpoint};
use gapless_testkit::rsa::RsaKey;

use crate::gated::gated_scenario;
use crate::support::jan;
use crate::warehouse::{prepare, scenario};

const TIMEOUT: Duration = Duration::from_secs(30);
const EMAIL: &str = "loader@gapless-test.iam.gserviceaccount.com";

fn params() -> ScriptParams {
    ScriptParams {
        start: jan(1),
        end: jan(1),
        date: None,
    }
}

/// A query that keeps the emulator busy for a few seconds.
const SLOW: &str = "SELECT COUNT(*) FROM UNNEST(GENERATE_ARRAY(1, 3000000)) a, \
     UNNEST(GENERATE_ARRAY(1, 10)) b WHERE MOD(a * b, 7) = 3";

#[tokio::test]
async fn bigquery_conformance() -> anyhow::Result<()> {
    let Some(emulator) = BqEmulator::start() else {
        return Ok(());
    };
    emulator.create_dataset("raw");
    // Two rows a page: the scenario's probes read their results over several pages.
    let warehouse = Warehouse::connect(&emulator.paged_url(), &[], Path::new("."), TIMEOUT).await?;
    assert_eq!(warehouse.dialect(), Dialect::BigQuery);
    scenario(&warehouse, "raw").await?;
    assert!(emulator.result_pages() >= 10, "{}", emulator.result_pages());
    let usage = warehouse.usage().expect("BigQuery counts its queries");
    assert!(usage.queries >= 30, "{usage:?}");

    // A script that outlives its timeout: the client gives up at the deadline, worth a retry.
    let started = Instant::now();
    let error = warehouse
        .execute_script_with_timeout(SLOW, &params(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The warehouse serves the next call.
    assert_eq!(warehouse.scalar("SELECT COUNT(*) FROM raw.t").await?, 8);

    // Attachments are SQLite's; a closed warehouse refuses calls.
    let error = Warehouse::connect(
        &emulator.url(),
        &[("raw".to_owned(), "raw.db".into())],
        Path::new("."),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, WarehouseError::AttachUnsupported),
        "{error:?}"
    );
    warehouse.close().await;
    let error = warehouse.scalar("SELECT 1").await.unwrap_err();
    assert!(matches!(error, WarehouseError::Closed), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn bigquery_gated_script_and_prepare() -> anyhow::Result<()> {
    let Some(emulator) = BqEmulator::start() else {
        return Ok(());
    };
    for dataset in ["raw", "mart", "prep"] {
        emulator.create_dataset(dataset);
    }
    let warehouse = Warehouse::connect(&emulator.url(), &[], Path::new("."), TIMEOUT).await?;
    gated_scenario(&warehouse, "raw", "mart").await?;

    emulator.query("CREATE TABLE prep.t (game_date DATE NOT NULL, game_id INT64 NOT NULL)");
    prepare_dry_runs(&emulator, &warehouse).await?;

    // A gated script whose probe outlives the timeout is rolled back.
    let error = warehouse
        .execute_script_gated(
            "INSERT INTO mart.loaded VALUES ('2024-01-03', 1)",
            &ScriptParams {
                start: jan(1),
                end: jan(5),
                date: None,
            },
            Duration::from_millis(300),
            &[&format!("SELECT CURRENT_DATE(), ({SLOW})")],
            |_| Ok::<_, ()>(()),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Timeout { .. }), "{error:?}");
    // The rollback runs in the background once the emulator is free again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = warehouse
            .scalar("SELECT COUNT(*) FROM mart.loaded WHERE d = '2024-01-03'")
            .await?;
        if rows == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out script was not rolled back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    warehouse.close().await;
    Ok(())
}

/// Validation by `dryRun`, in dataset `prep` holding `prep.t`. The emulator dry-runs queries
/// (tables, columns) and parses everything else; BigQuery itself also checks DML and DDL.
async fn prepare_dry_runs(emulator: &BqEmulator, warehouse: &Warehouse) -> anyhow::Result<()> {
    let before = emulator.queries();
    let ok = prepare(
        warehouse,
        &[],
        "SELECT game_date, COUNT(*) FROM prep.t WHERE game_date BETWEEN :start AND :end GROUP BY 1;
         INSERT INTO prep.t VALUES (:date, 1)",
    )
    .await?;
    assert_eq!(
        ok,
        Prepared {
            statements: 2,
            deferred: 0
        }
    );
    // One dry run per statement, and nothing ran.
    assert_eq!(emulator.queries(), before + 2);
    assert_eq!(warehouse.scalar("SELECT COUNT(*) FROM prep.t").await?, 0);

    for (sql, index, word) in [
        ("SELECT 1; SELECT game_date FROM prep.nope", 2, "nope"),
        ("SELECT no_such_column FROM prep.t", 1, "no_such_column"),
        ("SELEC game_date FROM prep.t", 1, "SELEC"),
    ] {
        let error = prepare(warehouse, &[], sql).await.unwrap_err();
        let WarehouseError::Prepare {
            index: found,
            source,
            ..
        } = &error
        else {
            panic!("{sql}: {error:?}");
        };
        assert_eq!(*found, index, "{sql}");
        assert!(
            source.message().contains(word),
            "{sql}: {}",
            source.message()
        );
        assert!(!error.is_retryable(), "{error:?}");
    }
    // A table the pipeline creates, read before it exists: left to the run.
    let created = "CREATE TABLE prep.made (game_date DATE);
         SELECT game_date, COUNT(*) FROM prep.made GROUP BY 1";
    assert_eq!(
        prepare(warehouse, &[created], created).await?,
        Prepared {
            statements: 2,
            deferred: 1
        }
    );
    // BigQuery's own parameters are refused before BigQuery sees the text.
    let error = prepare(warehouse, &[], "SELECT @day").await.unwrap_err();
    assert!(matches!(error, WarehouseError::Sql { .. }), "{error:?}");
    Ok(())
}

/// A service account, its key file (in `dir`) and the token endpoint that knows its key.
fn service_account(dir: &Path, expires_in: u64) -> (TokenEndpoint, std::path::PathBuf) {
    let key = RsaKey::generate();
    let tokens = TokenEndpoint::start(&key, EMAIL, expires_in);
    let path = dir.join("sa.json");
    std::fs::write(&path, tokens.service_account_json(&key, EMAIL)).unwrap();
    (tokens, path)
}

#[tokio::test]
async fn bigquery_service_account_tokens() -> anyhow::Result<()> {
    let Some(emulator) = BqEmulator::start() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    // Tokens that say they expire in 61 s: kept for 1 s (a minute before expiry).
    let (tokens, key_file) = service_account(dir.path(), 61);
    let gate = ApiGate::start(&emulator, &tokens);
    let url = format!(
        "bigquery://{PROJECT}?location=US&endpoint={}&credentials=sa.json",
        gate.endpoint()
    );
    assert!(key_file.is_file());
    // Connecting fetches the first token (so bad credentials show at once); calls reuse it.
    let warehouse = Warehouse::connect(&url, &[], dir.path(), TIMEOUT).await?;
    assert_eq!(tokens.issued(), 1, "refused: {:?}", tokens.refusals());
    warehouse.ping().await?;
    assert_eq!(warehouse.scalar("SELECT 41 + 1").await?, 42);
    assert_eq!(tokens.issued(), 1);
    assert_eq!(gate.calls().refused, 0);

    // Past its useful life the token is replaced before a call.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    warehouse.ping().await?;
    assert_eq!(tokens.issued(), 2);
    assert_eq!(gate.calls().refused, 0);

    // A token the API refuses (revoked): one 401, one new token, the call succeeds.
    tokens.revoke_all();
    assert_eq!(warehouse.scalar("SELECT 7").await?, 7);
    assert_eq!(tokens.issued(), 3);
    assert_eq!(gate.calls().refused, 1);
    assert!(tokens.refusals().is_empty(), "{:?}", tokens.refusals());
    warehouse.close().await;

    // A key the token endpoint does not know: refused when connecting, with the endpoint's
    // reason and no secret in the message.
    let stranger = RsaKey::generate();
    let other = tokens.service_account_json(&stranger, EMAIL);
    std::fs::write(dir.path().join("other.json"), &other)?;
    let error = Warehouse::connect(
        &url.replace("sa.json", "other.json"),
        &[],
        dir.path(),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    let chain = format!("{error:?} {}", error_chain(&error));
    assert!(chain.contains("invalid_grant"), "{chain}");
    assert!(
        chain.contains(&format!("service account {EMAIL}")),
        "{chain}"
    );
    assert!(
        !chain.contains("PRIVATE KEY") && !chain.contains("ya29"),
        "{chain}"
    );
    assert_eq!(tokens.refusals().len(), 1);

    // No credentials at all in front of the gate: every call is a 401, not retried as if it
    // were transient.
    let anonymous = Warehouse::connect(
        &format!("bigquery://{PROJECT}?endpoint={}", gate.endpoint()),
        &[],
        dir.path(),
        TIMEOUT,
    )
    .await?;
    let refused = gate.calls().refused;
    let error = anonymous.ping().await.unwrap_err();
    assert!(!error.is_retryable(), "{error:?}");
    assert_eq!(gate.calls().refused, refused + 1);
    assert!(
        error_chain(&error).contains("Invalid Credentials"),
        "{error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bigquery_retries_rate_limits_and_backend_errors() -> anyhow::Result<()> {
    let Some(emulator) = BqEmulator::start() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let (tokens, _) = service_account(dir.path(), 3600);
    let gate = ApiGate::start(&emulator, &tokens);
    let url = format!(
        "bigquery://{PROJECT}?location=US&endpoint={}&credentials=sa.json",
        gate.endpoint()
    );
    let warehouse = Warehouse::connect(&url, &[], dir.path(), TIMEOUT).await?;

    // A rate limit and a backend error, then the call goes through.
    gate.fail_next(&[(403, "rateLimitExceeded"), (503, "backendError")]);
    assert_eq!(warehouse.scalar("SELECT 3").await?, 3);
    assert_eq!(gate.calls().faulted, 2);

    // An error that is not BigQuery asking to try again is reported at once.
    gate.fail_next(&[(400, "invalidQuery")]);
    let error = warehouse.scalar("SELECT 3").await.unwrap_err();
    assert!(!error.is_retryable(), "{error:?}");
    let WarehouseError::Query {
        source: DatabaseError::BigQuery(cause),
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!((cause.status, cause.reason.as_str()), (400, "invalidQuery"));
    assert_eq!(gate.calls().faulted, 3);

    // Rate limits past every retry: a retryable failure, for the task to try again later.
    gate.fail_next(&[(429, "rateLimitExceeded"); 6]);
    let error = warehouse.scalar("SELECT 3").await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(gate.calls().faulted, 9);
    assert_eq!(warehouse.scalar("SELECT 4").await?, 4);
    warehouse.close().await;
    Ok(())
}

#[tokio::test]
async fn bigquery_requests_bind_dates_and_carry_the_byte_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sqlite = Warehouse::connect("sqlite::memory:", &[], dir.path(), TIMEOUT).await?;
    let error = sqlite
        .clone()
        .with_maximum_bytes_billed(Some(10))
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::BytesBilledUnsupported),
        "{error:?}"
    );
    let Some(emulator) = BqEmulator::start() else {
        return Ok(());
    };
    emulator.create_dataset("raw");
    emulator.query("CREATE TABLE raw.t (d DATE, note STRING)");
    let (tokens, _) = service_account(dir.path(), 3600);
    let gate = ApiGate::start(&emulator, &tokens);
    let url = format!(
        "bigquery://{PROJECT}?location=US&endpoint={}&credentials=sa.json",
        gate.endpoint()
    );
    let warehouse = Warehouse::connect(&url, &[], dir.path(), TIMEOUT)
        .await?
        .with_maximum_bytes_billed(Some(1_000_000))?;
    let inserted = warehouse
        .execute_script(
            "INSERT INTO raw.t VALUES (:date, ':start in a literal'), (:end, \"it\\'s :end\")",
            &ScriptParams {
                start: jan(1),
                end: jan(2),
                date: Some(jan(3)),
            },
        )
        .await?;
    assert_eq!(inserted, 2);
    assert_eq!(
        warehouse
            .counts(
                "SELECT d, COUNT(*) FROM raw.t WHERE note LIKE '%:start%' OR note LIKE \"%:end%\" GROUP BY d",
                jan(1),
                jan(5),
            )
            .await?,
        [(jan(2), 1), (jan(3), 1)].into()
    );
    let bodies = gate.queries();
    let insert = bodies
        .iter()
        .find(|body| {
            body["query"]
                .as_str()
                .is_some_and(|q| q.starts_with("INSERT"))
        })
        .expect("the INSERT was sent");
    // Dates as named DATE parameters; the literals untouched.
    assert_eq!(
        insert["query"],
        "INSERT INTO raw.t VALUES (@date, ':start in a literal'), (@end, \"it\\'s :end\")"
    );
    assert_eq!(insert["parameterMode"], "NAMED");
    let parameters = insert["queryParameters"].as_array().unwrap();
    assert_eq!(parameters.len(), 2);
    assert_eq!(parameters[0]["name"], "date");
    assert_eq!(parameters[0]["parameterType"]["type"], "DATE");
    assert_eq!(parameters[0]["parameterValue"]["value"], "2024-01-03");
    assert_eq!(parameters[1]["name"], "end");
    assert_eq!(insert["maximumBytesBilled"], "1000000");
    assert_eq!(insert["location"], "US");
    // The script ran in a session's transaction.
    assert!(
        insert["connectionProperties"][0]["value"].is_string(),
        "{insert}"
    );
    assert!(
        bodies
            .iter()
            .any(|body| body["query"] == "BEGIN TRANSACTION")
    );
    assert!(
        bodies
            .iter()
            .any(|body| body["query"] == "COMMIT TRANSACTION")
    );

    // Rows bound as one ARRAY<STRUCT> parameter, after the script, in its transaction.
    let rows = Rows {
        fields: vec![
            ("d".into(), "DATE".into()),
            ("note".into(), "STRING".into()),
        ],
        values: vec![
            vec![
                Some("2024-01-04".into()),
                Some("it's; DROP TABLE raw.t".into()),
            ],
            vec![Some("2024-01-04".into()), None],
        ],
    };
    let affected = warehouse
        .execute_script_and_insert(
            "DELETE FROM raw.t WHERE d = :date",
            &ScriptParams {
                start: jan(1),
                end: jan(5),
                date: Some(jan(2)),
            },
            TIMEOUT,
            "raw.t",
            &rows,
        )
        .await?;
    assert_eq!(affected, 1 + 2);
    assert_eq!(
        warehouse
            .counts("SELECT d, COUNT(*) FROM raw.t GROUP BY d", jan(1), jan(5))
            .await?,
        [(jan(3), 1), (jan(4), 2)].into()
    );
    assert_eq!(
        warehouse
            .scalar("SELECT COUNT(*) FROM raw.t WHERE note = 'it\\'s; DROP TABLE raw.t'")
            .await?,
        1
    );
    let bodies = gate.queries();
    assert!(
        bodies.iter().any(|body| body["query"]
            .as_str()
            .is_some_and(|q| q.contains("UNNEST(@rows)"))
            && body["queryParameters"][0]["parameterType"]["type"] == "ARRAY"),
        "{bodies:?}"
    );
    // A bad name is refused before anything runs, and so are rows on another warehouse.
    let error = warehouse
        .execute_script_and_insert("", &params(), TIMEOUT, "raw.t; DROP", &rows)
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::InvalidRows { .. }),
        "{error:?}"
    );
    let error = sqlite
        .execute_script_and_insert("", &params(), TIMEOUT, "t", &rows)
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::InvalidRows { .. }),
        "{error:?}"
    );
    Ok(())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
