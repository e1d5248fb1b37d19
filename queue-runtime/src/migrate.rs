//! The bundled schema migrations.
//!
//! Migrations are embedded in the binary and applied in order under a
//! server-side named lock (`GET_LOCK`), so many processes may call
//! [`Client::migrate`](crate::Client::migrate) at once: one applies, the
//! others wait and then find nothing to do. Each migration's statements are
//! idempotent (`IF NOT EXISTS`), since MySQL commits DDL implicitly and a
//! crash between a statement and the bookkeeping row must not wedge the next
//! run.

use sqlx::{AssertSqlSafe, MySqlPool, Row};

use crate::error::Result;

/// The migrations this build ships: (version, name, SQL).
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "jobs", include_str!("../migrations/0001_jobs.sql")),
    (2, "unique", include_str!("../migrations/0002_unique.sql")),
];

const LOCK_NAME: &str = "queue_runtime_migrate";

/// Applies every migration the database lacks.
pub(crate) async fn run(pool: &MySqlPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    // Named locks belong to the session: take it on one connection and do all
    // the work there. Names are per server, so include the schema's name.
    let lock: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT(?, DATABASE()), 60)")
        .bind(LOCK_NAME)
        .fetch_one(&mut *conn)
        .await?;
    if lock != Some(1) {
        return Err(crate::Error::InvalidArgument(
            "timed out after 60 s waiting for another process's migration".into(),
        ));
    }
    let result = apply(&mut conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT(?, DATABASE()))")
        .bind(LOCK_NAME)
        .execute(&mut *conn)
        .await;
    result
}

async fn apply(conn: &mut sqlx::MySqlConnection) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS queue_schema_migrations (
             version BIGINT NOT NULL PRIMARY KEY,
             name VARCHAR(255) NOT NULL,
             applied_at DATETIME(6) NOT NULL
         ) ENGINE = InnoDB",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM queue_schema_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(&found) = applied.iter().max()
        && found > known
    {
        return Err(crate::Error::SchemaTooNew { found, known });
    }
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        for statement in split_statements(sql) {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT IGNORE INTO queue_schema_migrations (version, name, applied_at) VALUES (?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(version)
        .bind(name)
        .execute(&mut *conn)
        .await?;
        tracing::info!(version, name, "applied queue-runtime migration");
    }
    Ok(())
}

/// Splits a migration file into statements on `;` at line ends, dropping
/// comment lines. Migration files are ours: no `;` inside string literals.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let stmt = current.trim().trim_end_matches(';').trim().to_owned();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_bundled_migrations() {
        let stmts = split_statements(MIGRATIONS[0].2);
        assert_eq!(stmts.len(), 3);
        assert!(
            stmts
                .iter()
                .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS"))
        );
    }
}
