//! A statement taken apart from the query a handler passed, and the
//! statement actually sent, as written or rewritten with its limit.

use sqlx::error::BoxDynError;
use sqlx::mysql::{MySql, MySqlArguments, MySqlStatement};
use sqlx::{AssertSqlSafe, Execute, SqlSafeStr, SqlStr};

/// A statement taken apart: its SQL, arguments and cache preference.
pub(super) struct Statement {
    pub(super) sql: SqlStr,
    args: Option<MySqlArguments>,
    persistent: bool,
}

impl Statement {
    pub(super) fn take<'q, E: Execute<'q, MySql>>(mut query: E) -> Result<Statement, sqlx::Error> {
        let args = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let persistent = query.persistent();
        Ok(Statement {
            sql: query.sql(),
            args,
            persistent,
        })
    }

    /// The statement as written.
    pub(super) fn unchanged(self) -> Outgoing {
        Outgoing {
            sql: self.sql,
            args: self.args,
            persistent: self.persistent,
        }
    }

    /// The statement with its SQL replaced. The new text embeds a time, so
    /// it is not worth caching as a prepared statement.
    pub(super) fn rewritten(self, sql: String) -> Outgoing {
        Outgoing {
            sql: AssertSqlSafe(sql).into_sql_str(),
            args: self.args,
            persistent: false,
        }
    }
}

/// What is sent on the connection.
pub(super) struct Outgoing {
    sql: SqlStr,
    args: Option<MySqlArguments>,
    persistent: bool,
}

impl Execute<'_, MySql> for Outgoing {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&MySqlStatement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<MySqlArguments>, BoxDynError> {
        Ok(self.args.take())
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}
