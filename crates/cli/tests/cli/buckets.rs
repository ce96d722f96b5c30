//! `check.files` on buckets, in the default binary: `s3://` against a real S3-compatible server
//! (`moto_server`) and `gs://` against a loopback server speaking GCS's listing and lookup calls,
//! with credentials found the usual way.

use gapless_testkit::buckets::{FakeGcs, Moto, service_account_json};

use crate::util::{Project, code, stderr, stdout};

/// Phase 1 lists a folder per date (at least 2 files expected); phase 2 looks up one object
/// per date.
fn pipeline(scheme: &str) -> String {
    format!(
        r#"
[pipeline]
name = "landing"
start = "2024-03-27"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "boxscores"
check.files = "{scheme}://landing/boxscores/{{date}}/*.json"
expect.min = 2

[[phase]]
id = 2
name = "schedule"
check.files = "{scheme}://landing/schedule/{{date}}.csv"
"#
    )
}

/// The objects: two box scores on the 27th, one on the 28th (short), three on the 29th, none
/// on the 30th; a schedule for every date but the 29th (the 31st's, not due yet, is already
/// there, so it counts as complete).
const OBJECTS: &[&str] = &[
    "boxscores/2024-03-27/a.json",
    "boxscores/2024-03-27/b.json",
    "boxscores/2024-03-28/a.json",
    "boxscores/2024-03-29/a.json",
    "boxscores/2024-03-29/b.json",
    "boxscores/2024-03-29/c.json",
    "boxscores/2024-03-29/notes.txt",
    "schedule/2024-03-27.csv",
    "schedule/2024-03-28.csv",
    "schedule/2024-03-30.csv",
    "schedule/2024-03-31.csv",
];

const STATUS: &str = "pipeline landing · 2024-03-27..2024-03-31 (5 days) · today 2024-03-31

phase 1   boxscores  complete 2 · partial 1 · missing 1 · blocked 0 · not due 1 · not expected 0
  complete  2024-03-27              1 cell
  partial   2024-03-28              1 cell, 1 of 2 expected
  complete  2024-03-29              1 cell
  missing   2024-03-30              1 cell
  not_due   2024-03-31              1 cell, due 2024-04-01 00:00 UTC

phase 2   schedule   complete 4 · partial 0 · missing 1 · blocked 0 · not due 0 · not expected 0
  complete  2024-03-27..2024-03-28  2 cells
  missing   2024-03-29              1 cell
  complete  2024-03-30..2024-03-31  2 cells
";

async fn project(scheme: &str) -> Project {
    let project = Project::new();
    project.write("gapless.toml", &pipeline(scheme));
    project.sqlite("warehouse.db").await.close().await;
    project
}

/// `gapless ARGS` at noon on the 31st, with no credentials from this machine's own home.
fn gapless(project: &Project, args: &[&str]) -> std::process::Command {
    let mut command = project.command(args);
    command
        .env("GAPLESS_NOW", "2024-03-31T12:00")
        .env("HOME", project.path());
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") || key.starts_with("GOOGLE_") || key == "STORAGE_EMULATOR_HOST" {
            command.env_remove(key);
        }
    }
    command
}

fn moto_with_objects() -> Option<Moto> {
    let moto = Moto::start()?;
    moto.create_bucket("landing");
    for key in OBJECTS {
        moto.put("landing", key, b"{}");
    }
    Some(moto)
}

#[tokio::test]
async fn s3_pattern_counts_objects_with_keys_from_the_environment() {
    let Some(moto) = moto_with_objects() else {
        return;
    };
    let project = project("s3").await;
    let output = gapless(&project, &["status"])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "AKIDLOADER")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), STATUS);

    // `scan` records the same gaps: the short and the missing cells, and nothing not yet due.
    let output = gapless(&project, &["scan", "--json"])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "AKIDLOADER")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .unwrap();
    // Gaps found: exit 1.
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let mut cells: Vec<String> = report["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gap| format!("{} {}", gap["phase_to"], gap["date"].as_str().unwrap()))
        .collect();
    cells.sort();
    assert_eq!(cells, ["1 2024-03-28", "1 2024-03-30", "2 2024-03-29"]);
}

#[tokio::test]
async fn s3_pattern_uses_the_aws_profile_of_the_shared_files() {
    let Some(moto) = moto_with_objects() else {
        return;
    };
    let project = project("s3").await;
    project.write(
        ".aws/credentials",
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = nope\n\n[loader]\naws_access_key_id = AKIDLOADER\naws_secret_access_key = secret\n",
    );
    project.write(
        ".aws/config",
        &format!(
            "[profile loader]\nregion = eu-west-1\nendpoint_url = {}\n",
            moto.endpoint()
        ),
    );
    let output = gapless(&project, &["status"])
        .env("AWS_PROFILE", "loader")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), STATUS);

    // A profile that is in neither file is named, with both files, before any request.
    let output = gapless(&project, &["status"])
        .env("AWS_PROFILE", "prod")
        .output()
        .unwrap();
    assert_eq!(code(&output), 3, "{}", stdout(&output));
    let error = stderr(&output);
    assert!(
        error.contains("cannot set up `s3://landing`: AWS_PROFILE is `prod`, but neither "),
        "{error}"
    );
}

const LOADER: &str = "loader@gapless-test.iam.gserviceaccount.com";

fn gcs_with_objects() -> FakeGcs {
    let gcs = FakeGcs::start(LOADER);
    for name in OBJECTS {
        gcs.put("landing", name);
    }
    gcs
}

#[tokio::test]
async fn gs_pattern_counts_objects_with_application_default_credentials() {
    let gcs = gcs_with_objects();
    let project = project("gs").await;
    let key = project.write("keys/loader.json", &service_account_json(LOADER));
    let output = gapless(&project, &["status"])
        .env("STORAGE_EMULATOR_HOST", gcs.url())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key)
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), STATUS);
    let calls = gcs.calls();
    assert_eq!(calls.refused, 0, "{calls:?}");
    // Phase 1 lists five date folders (the 29th's takes two pages), phase 2 looks up five objects.
    assert_eq!(calls.list_pages, 6, "{calls:?}");
    assert_eq!(calls.heads, 5, "{calls:?}");
}

#[tokio::test]
async fn gs_pattern_with_the_wrong_identity_names_the_bucket() {
    let gcs = gcs_with_objects();
    let project = project("gs").await;
    let key = project.write(
        "keys/other.json",
        &service_account_json("other@gapless-test.iam.gserviceaccount.com"),
    );
    let output = gapless(&project, &["status"])
        .env("STORAGE_EMULATOR_HOST", gcs.url())
        .env("GOOGLE_SERVICE_ACCOUNT", &key)
        .output()
        .unwrap();
    assert_eq!(code(&output), 3, "{}", stdout(&output));
    let error = stderr(&output);
    // Both phases read the bucket; whichever probe is refused first is the one reported.
    assert!(
        error.contains("cannot read objects under `gs://landing/boxscores/2024-03-")
            || error.contains("cannot read objects under `gs://landing/schedule/2024-03-"),
        "{error}"
    );
    assert!(gcs.calls().refused > 0);
}
