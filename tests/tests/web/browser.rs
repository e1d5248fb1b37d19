//! The dashboard in a real browser: headless Chromium over WebDriver
//! (chromedriver), against a database with jobs in every state. It clicks
//! pause on a queue and retry on a dead job, checks the database changed,
//! and saves screenshots under `target/screenshots/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use queue_runtime::web;

use crate::webdriver::{Driver, Session};
use crate::{seed, setup, stored_paused, stored_state};

/// `target/screenshots` (beside `target/tmp`).
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots")
}

/// Waits until the browser shows a URL containing `part` (a form's
/// redirect back), and returns it.
async fn wait_for_url(session: &Session, part: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = session.url().await;
        if url.contains(part) {
            return url;
        }
        assert!(
            Instant::now() < deadline,
            "the browser did not reach a URL with `{part}` within 15 s; it shows {url}:\n{}",
            session.source().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_pauses_a_queue_and_retries_a_dead_job() {
    let (db, client) = setup().await;
    let seeded = seed(&client).await;

    // The host application mounts the dashboard under a prefix.
    let app = Router::new().nest("/ops/queue", web::router(client.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/ops/queue", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let driver = Driver::start().await;
    let session = driver.session().await;

    // The overview: every state counted, and a screenshot of it.
    session.goto(&base).await;
    let page = session.source().await;
    for queue in ["web-idle", "web-work", "web-fail"] {
        assert!(page.contains(queue), "the overview lists {queue}:\n{page}");
    }
    for state in ["ready", "scheduled", "running", "blocked", "dead"] {
        let link = format!("state={state}");
        assert!(
            page.contains(&link),
            "the overview links to {state} jobs:\n{page}"
        );
    }
    session
        .screenshot(&screenshots().join("overview.png"))
        .await;

    // Pause a queue by its button; the database has it paused.
    assert!(stored_paused(&client).await.is_empty());
    session
        .click(r#"button[data-action="pause"][data-target="web-idle"]"#)
        .await;
    wait_for_url(&session, "flash=paused").await;
    assert_eq!(stored_paused(&client).await, ["web-idle"]);
    assert!(session.source().await.contains("Paused queue web-idle."));
    // Its row now offers resume instead.
    session
        .find(r#"button[data-action="resume"][data-target="web-idle"]"#)
        .await;

    // A dead job's page, then retry by its button: ready again, attempts reset.
    let dead = seeded.dead;
    assert_eq!(
        stored_state(&client, dead).await,
        Some((3, 2)),
        "dead after 2 attempts"
    );
    session.goto(&format!("{base}/jobs/{dead}")).await;
    let page = session.source().await;
    assert!(
        page.contains("smtp said no to &lt;7&gt;"),
        "the error, escaped:\n{page}"
    );
    session.screenshot(&screenshots().join("job.png")).await;
    session
        .click(&format!(
            r#"button[data-action="retry"][data-target="{dead}"]"#
        ))
        .await;
    wait_for_url(&session, "flash=retried").await;
    assert_eq!(
        stored_state(&client, dead).await,
        Some((0, 0)),
        "ready, attempts reset"
    );
    assert!(
        session
            .source()
            .await
            .contains("Put 1 dead job(s) back to run.")
    );

    // The list of dead jobs: check the other one, retry the selection.
    session.goto(&format!("{base}/jobs?state=dead")).await;
    session.screenshot(&screenshots().join("jobs.png")).await;
    let other = seeded.dead_too;
    session
        .click(&format!(r#"input[type="checkbox"][value="{other}"]"#))
        .await;
    session
        .click(r#"button[data-action="retry-selected"]"#)
        .await;
    wait_for_url(&session, "flash=retried").await;
    assert_eq!(
        stored_state(&client, other).await,
        Some((0, 0)),
        "ready, attempts reset"
    );
    assert!(
        session.source().await.contains("No job matches."),
        "no dead job left"
    );

    // Run the scheduled job now: ready, in its (paused) queue.
    let scheduled = seeded.scheduled;
    assert_eq!(stored_state(&client, scheduled).await.map(|s| s.0), Some(1));
    session.goto(&format!("{base}/jobs/{scheduled}")).await;
    session
        .click(&format!(
            r#"button[data-action="run-now"][data-target="{scheduled}"]"#
        ))
        .await;
    wait_for_url(&session, "flash=ran-now").await;
    assert_eq!(stored_state(&client, scheduled).await.map(|s| s.0), Some(0));

    // The live runtime is listed.
    session.goto(&format!("{base}/runtimes")).await;
    let page = session.source().await;
    assert!(
        page.contains("web-work"),
        "the runtime serving web-work:\n{page}"
    );

    // The running and blocked jobs' pages show their state.
    for (id, state) in [
        (seeded.running, "running"),
        (seeded.blocked, "blocked"),
        (seeded.ready, "ready"),
    ] {
        session.goto(&format!("{base}/jobs/{id}")).await;
        let page = session.source().await;
        assert!(
            page.contains(&format!("state-{state}")),
            "job {id} is {state}:\n{page}"
        );
    }

    session.close().await;
    drop(driver);
    server.abort();
    seeded
        .runtime
        .shutdown(Duration::from_millis(200))
        .await
        .unwrap();
    db.drop_db().await;
}
