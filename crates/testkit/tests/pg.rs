//! `fresh_pg_database` against a real server (skipped without `GAPLESS_TEST_PG_URL`).

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

async fn database_exists(admin_url: &str, name: &str) -> anyhow::Result<bool> {
    let mut admin = PgConnection::connect(admin_url).await?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await?;
    admin.close().await?;
    Ok(count == 1)
}

#[tokio::test]
async fn fresh_database_is_usable_and_dropped_explicitly() -> anyhow::Result<()> {
    let Some(url) = gapless_testkit::pg_url() else {
        return Ok(());
    };
    let db = gapless_testkit::fresh_pg_database(&url).await?;
    let name = db.name().to_owned();
    assert!(name.starts_with("gapless_test_"));
    assert!(db.url().contains(&name));
    let mut conn = PgConnection::connect(db.url())
        .await
        .context("connect to the fresh database")?;
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(current, name);
    // Left open on purpose: `drop_db` must not be blocked by a session the test forgot.
    db.drop_db().await?;
    assert!(!database_exists(&url, &name).await?);
    drop(conn);
    Ok(())
}

#[tokio::test]
async fn forgotten_database_is_dropped_by_the_guard() -> anyhow::Result<()> {
    let Some(url) = gapless_testkit::pg_url() else {
        return Ok(());
    };
    let db = gapless_testkit::fresh_pg_database(&url).await?;
    let name = db.name().to_owned();
    assert!(database_exists(&url, &name).await?);
    drop(db);
    assert!(!database_exists(&url, &name).await?);
    Ok(())
}
