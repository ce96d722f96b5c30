//! The schema: the version this binary needs and the migrations of both backends. A leaf
//! module: the SQLite backend and the [`crate::Store`] handle both read it.

use std::borrow::Cow;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Highest migration embedded in this binary; [`crate::Store::ensure_current`] demands exactly
/// this.
pub const SCHEMA_VERSION: i64 = 9;

/// One embedded migration: version, description, SQL.
type EmbeddedMigration = (i64, &'static str, &'static str);

// PostgreSQL keeps sqlx's migrator. The `sqlx::migrate!` macro needs sqlx's `macros` feature,
// which costs 30–50 s per clean build (STACK.md). Its runtime half needs nothing extra:
// `Migrator::with_migrations` over `include_str!`-embedded files gives the `_sqlx_migrations`
// table, checksums (an edited, already-applied migration is an error, not silently skipped),
// per-migration transactions and an advisory lock against concurrent `migrate` calls. SQLite
// runs on rusqlite and has its own runner (`sqlite::SqliteStore::migrate`).
pub(crate) const POSTGRES_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "lean events",
        include_str!("../migrations/postgres/0002_lean_events.sql"),
    ),
    (
        3,
        "gap ledger",
        include_str!("../migrations/postgres/0003_gap_ledger.sql"),
    ),
    (
        4,
        "checks without IN lists",
        include_str!("../migrations/postgres/0004_checks_without_in_lists.sql"),
    ),
    (
        5,
        "fencing and ownership",
        include_str!("../migrations/postgres/0005_fencing_and_ownership.sql"),
    ),
    (
        6,
        "inbox and consumers",
        include_str!("../migrations/postgres/0006_inbox_and_consumers.sql"),
    ),
    (
        7,
        "alerts and ticks",
        include_str!("../migrations/postgres/0007_alerts_and_ticks.sql"),
    ),
    (
        8,
        "nodes and leases",
        include_str!("../migrations/postgres/0008_nodes_and_leases.sql"),
    ),
    (
        9,
        "epoch sequence",
        include_str!("../migrations/postgres/0009_epoch_sequence.sql"),
    ),
];

pub(crate) fn migrator(embedded: &[EmbeddedMigration]) -> Migrator {
    Migrator::with_migrations(
        embedded
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The embedded SQLite migrations: version and SQL, in order. Never edit a released one (the
/// `migrations_are_pinned` test fails): add the next instead. Unlike sqlx's migrator this
/// runner keeps no checksums, so that test is what catches an edited migration.
pub(crate) const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_lean_events.sql")),
    (3, include_str!("../migrations/sqlite/0003_gap_ledger.sql")),
    (
        4,
        include_str!("../migrations/sqlite/0004_checks_without_in_lists.sql"),
    ),
    (
        5,
        include_str!("../migrations/sqlite/0005_fencing_and_ownership.sql"),
    ),
    (
        6,
        include_str!("../migrations/sqlite/0006_inbox_and_consumers.sql"),
    ),
    (
        7,
        include_str!("../migrations/sqlite/0007_alerts_and_ticks.sql"),
    ),
    (
        8,
        include_str!("../migrations/sqlite/0008_nodes_and_leases.sql"),
    ),
    (
        9,
        include_str!("../migrations/sqlite/0009_epoch_sequence.sql"),
    ),
];

#[cfg(test)]
mod tests {
    use super::{POSTGRES_MIGRATIONS, SCHEMA_VERSION, SQLITE_MIGRATIONS};

    #[test]
    fn both_backends_embed_the_schema_version() {
        assert_eq!(
            POSTGRES_MIGRATIONS.last().map(|m| m.0),
            Some(SCHEMA_VERSION)
        );
        assert_eq!(SQLITE_MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }

    /// Released migrations are immutable: the databases they built exist. FNV-1a over the text;
    /// update the pin only together with a migration that has not been released.
    #[test]
    fn migrations_are_pinned() {
        fn fnv1a(text: &str) -> u64 {
            text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
        }
        let pins: Vec<(i64, u64)> = SQLITE_MIGRATIONS
            .iter()
            .map(|&(version, sql)| (version, fnv1a(sql)))
            .collect();
        assert_eq!(
            pins,
            [
                (1, 0xb3ed_8844_4708_2819),
                (2, 0x0f82_3cde_88a7_b33a),
                (3, 0xd983_ec3f_e0aa_e310),
                (4, 0x72fa_8287_150d_feef),
                (5, 0x7449_c070_0426_13f9),
                (6, 0x364a_f22d_8c28_2cee),
                (7, 0xfc57_a505_7eab_340f),
                (8, 0xfc98_bbc5_525c_3e03),
                (9, 0x9872_14bd_8920_e972),
            ]
        );
        assert_eq!(SQLITE_MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }
}
