//! The bundled schema migrations, and the check that a database has them.
//!
//! Migrations are embedded in the binary and applied in order under a
//! server-side named lock (`GET_LOCK`), so many processes may call
//! [`Client::migrate`](crate::Client::migrate) at once: one applies, the
//! others wait and then find nothing to do.
//!
//! MySQL and MariaDB commit each DDL statement by itself, so a process that
//! dies inside a migration leaves some of its statements applied and no
//! bookkeeping row; the next run applies the migration again. Every
//! statement is therefore safe to run again: either it is idempotent itself
//! (`CREATE TABLE IF NOT EXISTS`) or it comes with an [`Applied`] probe of
//! `information_schema` that finds its change already made, and then it is
//! skipped. The probes are plain SQL that MariaDB and MySQL 8 both answer
//! (MySQL 8 has no `ADD COLUMN IF NOT EXISTS`).
//!
//! [`check`] compares the database's versions with this build's: the
//! runtime and the enqueue paths refuse a schema newer than the code and ask
//! for `migrate()` when it is older.

use sqlx::{AssertSqlSafe, MySqlExecutor, MySqlPool, Row};

use crate::error::{Error, Result, sql_error_number};

/// One migration: a version, a name, and its SQL, one statement per
/// [`Applied`] probe.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    sql: &'static str,
    /// For each statement of `sql`, in order, how to tell it was applied.
    applied: &'static [Applied],
}

/// How to tell that one statement of a migration has made its change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applied {
    /// Never skipped: the statement is idempotent itself (`IF NOT EXISTS`).
    Idempotent,
    /// An `ADD COLUMN`: the column exists.
    Column {
        table: &'static str,
        column: &'static str,
    },
    /// An `ADD [UNIQUE] KEY`: the index exists.
    Index {
        table: &'static str,
        index: &'static str,
    },
    /// A `MODIFY`: the column has this type (as `information_schema`
    /// spells it, lower case: `varbinary(1788)`).
    ColumnType {
        table: &'static str,
        column: &'static str,
        column_type: &'static str,
    },
}

const COLUMN_EXISTS: &str = "SELECT COUNT(*) FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?";
const INDEX_EXISTS: &str = "SELECT COUNT(*) FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ?";
const COLUMN_TYPE_IS: &str = "SELECT COUNT(*) FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ? \
     AND LOWER(COLUMN_TYPE) = ?";

impl Applied {
    /// A query that counts more than zero rows once the statement's change
    /// is made, and its parameters; `None` for a statement always run.
    fn probe(self) -> Option<(&'static str, Vec<&'static str>)> {
        match self {
            Applied::Idempotent => None,
            Applied::Column { table, column } => Some((COLUMN_EXISTS, vec![table, column])),
            Applied::Index { table, index } => Some((INDEX_EXISTS, vec![table, index])),
            Applied::ColumnType {
                table,
                column,
                column_type,
            } => Some((COLUMN_TYPE_IS, vec![table, column, column_type])),
        }
    }
}

/// The migrations this build ships, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs",
        sql: include_str!("../../migrations/0001_jobs.sql"),
        applied: &[Applied::Idempotent; 3],
    },
    Migration {
        version: 2,
        name: "unique",
        sql: include_str!("../../migrations/0002_unique.sql"),
        applied: &[
            Applied::Column {
                table: "queue_jobs",
                column: "unique_key",
            },
            Applied::Index {
                table: "queue_jobs",
                index: "queue_jobs_unique",
            },
        ],
    },
    Migration {
        version: 3,
        name: "unique_bytes",
        sql: include_str!("../../migrations/0003_unique_bytes.sql"),
        applied: &[Applied::ColumnType {
            table: "queue_jobs",
            column: "unique_key",
            column_type: "varbinary(1788)",
        }],
    },
    Migration {
        version: 4,
        name: "paused_queues",
        sql: include_str!("../../migrations/0004_paused_queues.sql"),
        applied: &[Applied::Idempotent],
    },
    Migration {
        version: 5,
        name: "limits",
        sql: include_str!("../../migrations/0005_limits.sql"),
        applied: &[
            Applied::Column {
                table: "queue_jobs",
                column: "concurrency_key",
            },
            Applied::Column {
                table: "queue_jobs",
                column: "rate_key",
            },
            Applied::Column {
                table: "queue_jobs",
                column: "slot",
            },
            Applied::Column {
                table: "queue_jobs",
                column: "rate_window",
            },
            Applied::Column {
                table: "queue_ready",
                column: "limited",
            },
            Applied::Idempotent,
            Applied::Idempotent,
            Applied::Idempotent,
        ],
    },
    Migration {
        version: 6,
        name: "sleepers",
        sql: include_str!("../../migrations/0006_sleepers.sql"),
        applied: &[Applied::Idempotent],
    },
    Migration {
        version: 7,
        name: "operators",
        sql: include_str!("../../migrations/0007_operators.sql"),
        applied: &[
            Applied::Idempotent,
            Applied::Idempotent,
            Applied::Column {
                table: "queue_jobs",
                column: "errors",
            },
        ],
    },
    Migration {
        version: 8,
        name: "runtime_node",
        sql: include_str!("../../migrations/0008_runtime_node.sql"),
        applied: &[Applied::Column {
            table: "queue_runtimes",
            column: "node",
        }],
    },
];

/// The newest schema version this build ships.
pub(crate) const KNOWN: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

const LOCK_NAME: &str = "queue_runtime_migrate";

/// MySQL refuses lock names longer than this (MariaDB has no limit).
const MAX_LOCK_NAME: usize = 64;

fn no_database() -> Error {
    Error::InvalidArgument(
        "the database URL names no database: give it one as its path, as in mysql://user@host/jobs"
            .into(),
    )
}

/// Applies every migration the database lacks.
pub(crate) async fn run(pool: &MySqlPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let database: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&mut *conn)
        .await?;
    let Some(database) = database else {
        return Err(no_database());
    };
    // Named locks belong to the session: take it on one connection and do all
    // the work there. Names are per server, so include the schema's name
    // (its MD5 when the name would be too long for MySQL).
    let name_sql = if LOCK_NAME.len() + database.chars().count() <= MAX_LOCK_NAME {
        "CONCAT(?, DATABASE())"
    } else {
        "CONCAT(?, MD5(DATABASE()))"
    };
    let lock: Option<i64> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT GET_LOCK({name_sql}, 60)")))
            .bind(LOCK_NAME)
            .fetch_one(&mut *conn)
            .await?;
    if lock != Some(1) {
        return Err(Error::Busy(
            "waited 60 s for another process's migration to end".into(),
        ));
    }
    let result = apply(&mut conn).await;
    let _ = sqlx::query(AssertSqlSafe(format!("SELECT RELEASE_LOCK({name_sql})")))
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
    if let Some(&found) = applied.iter().max()
        && found > KNOWN
    {
        return Err(Error::SchemaTooNew {
            found,
            known: KNOWN,
        });
    }
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        let statements = split_statements(migration.sql);
        debug_assert_eq!(statements.len(), migration.applied.len());
        for (statement, applied) in statements.into_iter().zip(migration.applied) {
            if is_applied(&mut *conn, *applied).await? {
                tracing::info!(
                    version = migration.version,
                    ?applied,
                    "queue-runtime migration step already applied; skipped"
                );
                continue;
            }
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT IGNORE INTO queue_schema_migrations (version, name, applied_at) VALUES (?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(migration.version)
        .bind(migration.name)
        .execute(&mut *conn)
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied queue-runtime migration"
        );
    }
    Ok(())
}

/// Whether a statement's change is already in the schema.
async fn is_applied(conn: &mut sqlx::MySqlConnection, applied: Applied) -> Result<bool> {
    let Some((sql, params)) = applied.probe() else {
        return Ok(false);
    };
    let mut query = sqlx::query_scalar::<_, i64>(sql);
    for p in params {
        query = query.bind(p);
    }
    Ok(query.fetch_one(conn).await? > 0)
}

/// Checks that the database's schema is the one this build ships:
/// [`Error::SchemaTooNew`] if it is newer, [`Error::SchemaTooOld`] if a
/// migration is missing (or there is no schema at all).
pub(crate) async fn check<'e>(executor: impl MySqlExecutor<'e>) -> Result<()> {
    let versions: Vec<i64> = match sqlx::query_scalar("SELECT version FROM queue_schema_migrations")
        .fetch_all(executor)
        .await
    {
        Ok(versions) => versions,
        // 1146: no such table, so no schema yet.
        Err(e) if sql_error_number(&e) == Some(1146) => Vec::new(),
        // 1046: no database selected.
        Err(e) if sql_error_number(&e) == Some(1046) => return Err(no_database()),
        Err(e) => return Err(e.into()),
    };
    verdict(&versions)
}

/// What [`check`] says of a database with these migrations recorded.
fn verdict(versions: &[i64]) -> Result<()> {
    if let Some(&found) = versions.iter().max()
        && found > KNOWN
    {
        return Err(Error::SchemaTooNew {
            found,
            known: KNOWN,
        });
    }
    // The schema is at the last version before the first one missing.
    let found = MIGRATIONS
        .iter()
        .take_while(|m| versions.contains(&m.version))
        .last()
        .map_or(0, |m| m.version);
    if found < KNOWN {
        return Err(Error::SchemaTooOld {
            found,
            known: KNOWN,
        });
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
        let stmts = split_statements(MIGRATIONS[0].sql);
        assert_eq!(stmts.len(), 3);
        assert!(
            stmts
                .iter()
                .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS"))
        );
    }

    #[test]
    fn versions_count_up_from_one() {
        for (version, m) in (1..).zip(MIGRATIONS) {
            assert_eq!(m.version, version, "{}", m.name);
        }
        assert_eq!(KNOWN, 8);
    }

    /// Every statement has a probe, and each probe tests what its statement
    /// changes: a statement run twice without one would fail (1060
    /// duplicate column, 1061 duplicate key) or redo its work.
    #[test]
    fn every_statement_can_tell_it_was_applied() {
        for m in MIGRATIONS {
            let stmts = split_statements(m.sql);
            assert_eq!(stmts.len(), m.applied.len(), "migration {}", m.version);
            for (stmt, applied) in stmts.iter().zip(m.applied) {
                let one_line = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
                let alter = |table: &str| format!("ALTER TABLE {table} ");
                match *applied {
                    Applied::Idempotent => {
                        assert!(
                            one_line.starts_with("CREATE TABLE IF NOT EXISTS "),
                            "{stmt}"
                        );
                    }
                    Applied::Column { table, column } => {
                        assert!(one_line.starts_with(&alter(table)), "{stmt}");
                        assert!(
                            one_line.contains(&format!("ADD COLUMN {column} ")),
                            "{stmt}"
                        );
                    }
                    Applied::Index { table, index } => {
                        assert!(one_line.starts_with(&alter(table)), "{stmt}");
                        assert!(one_line.contains(&format!("KEY {index} ")), "{stmt}");
                    }
                    Applied::ColumnType {
                        table,
                        column,
                        column_type,
                    } => {
                        assert!(one_line.starts_with(&alter(table)), "{stmt}");
                        let modify = format!("MODIFY {column} {}", column_type.to_uppercase());
                        assert!(one_line.contains(&modify), "{stmt}");
                        assert_eq!(column_type, column_type.to_lowercase());
                    }
                }
                // One change per statement: a second clause would escape the probe.
                assert!(!one_line.contains(", ADD ") && !one_line.contains(", MODIFY "));
            }
        }
    }

    #[test]
    fn probes_bind_each_placeholder_and_stay_in_the_current_schema() {
        for m in MIGRATIONS {
            for applied in m.applied {
                if let Some((sql, params)) = applied.probe() {
                    assert_eq!(sql.matches('?').count(), params.len(), "{sql}");
                    assert!(sql.contains("TABLE_SCHEMA = DATABASE()"), "{sql}");
                    assert!(sql.starts_with("SELECT COUNT(*) FROM information_schema."));
                }
            }
        }
    }

    #[test]
    fn the_unique_key_column_holds_the_longest_stored_key() {
        // Task names have at most 255 characters, keys 191, and a UTF-8
        // character at most 4 bytes; U+001F is one.
        let longest = 255 * 4 + 1 + 191 * 4;
        let sql = MIGRATIONS[2].sql;
        let size = &sql[sql.find("VARBINARY(").unwrap() + "VARBINARY(".len()..];
        let size: usize = size[..size.find(')').unwrap()].parse().unwrap();
        // At most InnoDB's limit on an index key (DYNAMIC rows).
        assert!((longest..=3072).contains(&size), "{size}");
    }

    #[test]
    fn the_verdict_follows_the_recorded_versions() {
        assert!(verdict(&[1, 2, 3, 4, 5, 6, 7, 8]).is_ok());
        assert!(verdict(&[4, 3, 8, 7, 6, 5, 1, 2]).is_ok());
        let too_old = |v: &[i64]| match verdict(v) {
            Err(Error::SchemaTooOld { found, known: 8 }) => found,
            other => panic!("{v:?}: {other:?}"),
        };
        assert_eq!(too_old(&[]), 0);
        assert_eq!(too_old(&[1]), 1);
        assert_eq!(too_old(&[1, 2]), 2);
        assert_eq!(too_old(&[1, 2, 3]), 3);
        assert_eq!(too_old(&[1, 3]), 1);
        assert_eq!(too_old(&[2, 3]), 0);
        assert_eq!(too_old(&[1, 2, 3, 4]), 4);
        assert_eq!(too_old(&[1, 2, 3, 4, 5]), 5);
        assert_eq!(too_old(&[1, 2, 3, 4, 5, 6]), 6);
        assert_eq!(too_old(&[1, 2, 3, 4, 5, 6, 7]), 7);
        assert!(matches!(
            verdict(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Err(Error::SchemaTooNew { found: 9, known: 8 })
        ));
        assert!(matches!(
            verdict(&[999]),
            Err(Error::SchemaTooNew { found: 999, .. })
        ));
    }

    #[test]
    fn the_too_old_error_says_what_to_do() {
        let none = Error::SchemaTooOld { found: 0, known: 3 };
        assert_eq!(
            none.to_string(),
            "the database has no queue-runtime schema (this build's is version 3); run Client::migrate()"
        );
        let behind = Error::SchemaTooOld { found: 2, known: 3 };
        assert_eq!(
            behind.to_string(),
            "the database schema is at version 2, older than this build's 3; run Client::migrate()"
        );
    }
}
