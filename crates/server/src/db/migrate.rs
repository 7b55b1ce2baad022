//! Schema migrations: one SQL file per version and dialect, the same version numbers on both.
//!
//! Each version is applied in its own transaction together with its row in
//! `schema_migrations`, so a failed migration leaves the previous version intact. On
//! PostgreSQL an advisory lock keeps two replicas starting at once from racing.

use super::{Db, DbError, DbResult, Dialect, Value};

/// (version, SQLite script, PostgreSQL script).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../migrations/sqlite/0002_tunnel.sql"),
        include_str!("../../migrations/postgres/0002_tunnel.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_card_keys.sql"),
        include_str!("../../migrations/postgres/0003_card_keys.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_keyring.sql"),
        include_str!("../../migrations/postgres/0004_keyring.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_enrolment.sql"),
        include_str!("../../migrations/postgres/0005_enrolment.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_update.sql"),
        include_str!("../../migrations/postgres/0006_update.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_update_schedules.sql"),
        include_str!("../../migrations/postgres/0007_update_schedules.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_vault.sql"),
        include_str!("../../migrations/postgres/0008_vault.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_session_awaits.sql"),
        include_str!("../../migrations/postgres/0009_session_awaits.sql"),
    ),
];

/// Every schema version, oldest first.
pub const MIGRATION_VERSIONS: &[i64] = &[1, 2, 3, 4, 5, 6, 7, 8, 9];

/// The newest schema version this build knows.
pub const LATEST_VERSION: i64 = 9;

/// Advisory-lock key that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x7465_7373_0001;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";

pub(super) async fn current_version(db: &Db) -> DbResult<i64> {
    let mut tx = db.begin().await?;
    tx.lock(MIGRATION_LOCK).await?;
    tx.batch(CREATE_TABLE).await?;
    let row = tx.query_opt("SELECT MAX(version) FROM schema_migrations", &[]).await?;
    tx.commit().await?;
    Ok(row.map(|r| r.opt_int(0)).transpose()?.flatten().unwrap_or(0))
}

pub(super) async fn migrate_to(db: &Db, target: i64) -> DbResult<()> {
    if target > LATEST_VERSION {
        return Err(DbError::Other(format!(
            "schema version {target} is newer than this build knows ({LATEST_VERSION})"
        )));
    }
    for &(version, sqlite, postgres) in MIGRATIONS {
        if version > target {
            break;
        }
        let mut tx = db.begin().await?;
        tx.lock(MIGRATION_LOCK).await?;
        tx.batch(CREATE_TABLE).await?;
        let applied = tx
            .query_opt(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[Value::Int(version)],
            )
            .await?
            .is_some();
        if applied {
            continue;
        }
        tx.batch(match db.dialect() {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        })
        .await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[Value::Int(version), Value::Int(crate::clock::now())],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied schema migration");
    }
    // A database written by a newer build must not be run by an older one.
    let current = current_version(db).await?;
    if current > LATEST_VERSION {
        return Err(DbError::Other(format!(
            "database schema version {current} is newer than this build ({LATEST_VERSION})"
        )));
    }
    Ok(())
}
