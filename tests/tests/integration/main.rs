//! Integration tests against a real MariaDB: each test gets its own database.
//!
//! All tests live in one binary (faster to link); each module is one area.

mod admin;
mod claim;
mod deadlines;
mod outcomes;
mod priority;
mod schedule;

use queue_runtime::Client;
use queue_tests::TestDb;

/// A fresh database with the schema applied, and a client on it.
pub async fn setup() -> (TestDb, Client) {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let client = Client::connect(&db.url).await.expect("connect");
    client.migrate().await.expect("migrate");
    (db, client)
}
