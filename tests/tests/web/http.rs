//! The dashboard over plain HTTP, through tower's `oneshot`: links under a
//! prefix, CSRF refusals, read-only mode, bad input.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use queue_runtime::{JobId, testing, web};
use tower::ServiceExt;

use crate::{fails, idle, setup, stored_paused, stored_state};

const PREFIX: &str = "/ops/queue";

/// The dashboard nested under [`PREFIX`] in a host router.
fn app(client: &queue_runtime::Client, read_only: bool) -> Router {
    Router::new().nest(
        PREFIX,
        web::Dashboard::new(client.clone())
            .read_only(read_only)
            .router(),
    )
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, location, String::from_utf8(body.to_vec()).unwrap())
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
    let (status, _, body) = send(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    (status, body)
}

/// A form POST as a browser on the same origin sends it.
fn post(uri: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "dash.example")
        .header(header::ORIGIN, "http://dash.example")
        .header("sec-fetch-site", "same-origin")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

/// Every value of `attr="…"` in the page.
fn attrs<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    html.split(&needle)
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect()
}

fn csrf_token(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A dead job, made by running a failing job to its end here.
async fn dead_job(client: &queue_runtime::Client) -> JobId {
    let id = fails::enqueue(client, 1).await.unwrap();
    let clock = testing::TestClock::new(client, chrono::Utc::now())
        .await
        .unwrap();
    let drained = testing::drain(clock.client())
        .advancing(&clock)
        .queues(["web-fail"])
        .await
        .unwrap();
    assert_eq!(drained.dead(), 1, "{:?}", drained.attempts());
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_link_and_form_is_under_the_prefix() {
    let (db, client) = setup().await;
    let dead = dead_job(&client).await;
    client.pause_queue("web-idle").await.unwrap();
    let app = app(&client, false);
    // (Nested at PREFIX, the overview is PREFIX itself: axum's `nest` does
    // not route PREFIX + "/".)
    for page in ["", "/recurring", &format!("/jobs/{dead}")] {
        let (status, html) = get(&app, &format!("{PREFIX}{page}")).await;
        assert_eq!(status, StatusCode::OK, "{page}: {html}");
        let links: Vec<&str> = attrs(&html, "href")
            .into_iter()
            .chain(attrs(&html, "action"))
            .collect();
        assert!(links.len() >= 5, "{page}: {links:?}");
        for link in links {
            assert!(
                link.starts_with(&format!("{PREFIX}/")) || link == PREFIX,
                "{page}: the link `{link}` is not under {PREFIX}"
            );
        }
    }
    let (status, css) = get(&app, &format!("{PREFIX}/assets/dashboard.css")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(css.contains("font-family"));
    // Not nested: links from the root.
    let root = web::router(client.clone());
    let (status, html) = get(&root, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(attrs(&html, "href").contains(&"/assets/dashboard.css"));
    assert!(attrs(&html, "action").contains(&"/actions/resume"));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_this_dashboards_token_or_from_another_site_are_refused() {
    let (db, client) = setup().await;
    idle::enqueue(&client, "a@example.com".into())
        .await
        .unwrap();
    let app = app(&client, false);
    let (_, html) = get(&app, PREFIX).await;
    let token = csrf_token(&html);
    let uri = format!("{PREFIX}/actions/pause");

    let refused = [
        post(&uri, "queue=web-idle&back=%2F"),
        post(&uri, "queue=web-idle&csrf=0123456789abcdef0123456789abcdef"),
        post(
            &uri,
            &format!("queue=web-idle&csrf={}", &token[..token.len() - 1]),
        ),
        // A token from another router (another process, a restart).
        post(
            &uri,
            &format!("queue=web-idle&csrf={}", {
                let (_, other) = get(
                    &Router::new().nest(PREFIX, web::router(client.clone())),
                    PREFIX,
                )
                .await;
                csrf_token(&other)
            }),
        ),
    ];
    for req in refused {
        let (status, _, body) = send(&app, req).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("CSRF token"), "{body}");
    }
    let mut cross_site = post(&uri, &format!("queue=web-idle&csrf={token}"));
    cross_site
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    let mut other_origin = post(&uri, &format!("queue=web-idle&csrf={token}"));
    other_origin.headers_mut().remove("sec-fetch-site");
    other_origin
        .headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    for req in [cross_site, other_origin] {
        let (status, _, body) = send(&app, req).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    assert!(
        stored_paused(&client).await.is_empty(),
        "nothing was paused"
    );

    // The same form with the token, from the same origin: done, and back.
    let (status, location, _) = send(
        &app,
        post(
            &uri,
            &format!("queue=web-idle&csrf={token}&back=%2F%3Fflash%3Dx"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.unwrap();
    assert_eq!(
        location,
        format!("{PREFIX}?flash=paused&arg=web-idle"),
        "an old flash is dropped"
    );
    assert_eq!(stored_paused(&client).await, ["web-idle"]);
    let (_, page) = get(&app, &location).await;
    assert!(page.contains("Paused queue web-idle."), "{page}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_dashboard_shows_no_form_and_refuses_every_post() {
    let (db, client) = setup().await;
    let dead = dead_job(&client).await;
    let app = app(&client, true);
    for page in [PREFIX.to_owned(), format!("{PREFIX}/jobs/{dead}")] {
        let (status, html) = get(&app, &page).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!html.contains("<form method=\"post\""), "{html}");
        assert!(!html.contains("name=\"csrf\""), "{html}");
        assert!(html.contains("read-only"));
    }
    // Even with the token of a writable dashboard of the same key.
    let key = "a-shared-key-of-the-replicas";
    let writable = Router::new().nest(
        PREFIX,
        web::Dashboard::new(client.clone()).csrf_key(key).router(),
    );
    let read_only = Router::new().nest(
        PREFIX,
        web::Dashboard::new(client.clone())
            .csrf_key(key)
            .read_only(true)
            .router(),
    );
    for action in [
        "retry",
        "retry-selected",
        "cancel",
        "pause",
        "resume",
        "no-such-action",
    ] {
        let req = post(
            &format!("{PREFIX}/actions/{action}"),
            &format!("id={dead}&queue=web-fail&csrf={key}"),
        );
        let (status, _, body) = send(&read_only, req).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
    }
    assert_eq!(
        stored_state(&client, dead).await,
        Some((3, 2)),
        "still dead"
    );
    assert!(stored_paused(&client).await.is_empty());
    // The writable one takes that key, and retries the dead job.
    let req = post(
        &format!("{PREFIX}/actions/retry"),
        &format!("id={dead}&csrf={key}&back=%2Fjobs%2F{dead}"),
    );
    let (status, location, _) = send(&writable, req).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.unwrap(),
        format!("{PREFIX}/jobs/{dead}?flash=retried&arg=1")
    );
    assert_eq!(
        stored_state(&client, dead).await,
        Some((0, 0)),
        "ready, attempts reset"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_paths_are_answered_not_panicked_on() {
    let (db, client) = setup().await;
    let app = app(&client, false);
    let cases = [
        ("/jobs/123456789", StatusCode::NOT_FOUND),
        ("/jobs/abc", StatusCode::BAD_REQUEST),
        ("/jobs/-1", StatusCode::BAD_REQUEST),
        ("/jobs/99999999999999999999999", StatusCode::BAD_REQUEST),
        ("/jobs/%FF", StatusCode::BAD_REQUEST),
        ("/no/such/page", StatusCode::NOT_FOUND),
        ("?flash=%ZZ&arg=%FF%FE", StatusCode::OK),
        (
            "?flash=retried&arg=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            StatusCode::OK,
        ),
    ];
    for (path, want) in cases {
        let (status, body) = get(&app, &format!("{PREFIX}{path}")).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(!body.contains("<script>"), "{path}: escaped");
        assert!(body.contains("</html>"), "{path}: an HTML page");
    }
    // A form with bad ids or too many.
    let ready = idle::enqueue(&client, "x@example.com".into())
        .await
        .unwrap();
    let (_, html) = get(&app, PREFIX).await;
    let token = csrf_token(&html);
    let too_many: String = (1..=1001).map(|i| format!("id={i}&")).collect();
    let forms = [
        (
            "retry",
            format!("id=x&csrf={token}"),
            StatusCode::BAD_REQUEST,
        ),
        ("retry", format!("csrf={token}"), StatusCode::BAD_REQUEST),
        (
            "retry-selected",
            format!("id=1&id=oops&csrf={token}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "retry-selected",
            format!("{too_many}csrf={token}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "pause",
            format!("queue=&csrf={token}"),
            StatusCode::BAD_REQUEST,
        ),
        ("pause", format!("csrf={token}"), StatusCode::BAD_REQUEST),
        (
            "cancel",
            format!("id=%FF&csrf={token}"),
            StatusCode::BAD_REQUEST,
        ),
        ("explode", format!("csrf={token}"), StatusCode::NOT_FOUND),
    ];
    for (action, form, want) in forms {
        let (status, _, body) =
            send(&app, post(&format!("{PREFIX}/actions/{action}"), &form)).await;
        assert_eq!(status, want, "{action} {form}: {body}");
    }
    // Retrying a job that is not dead changes nothing and says so.
    let (status, location, _) = send(
        &app,
        post(
            &format!("{PREFIX}/actions/retry"),
            &format!("id={ready}&csrf={token}&back=//evil.example/"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.unwrap(),
        format!("{PREFIX}?flash=not-dead&arg={ready}"),
        "an outside `back` goes to the overview"
    );
    assert_eq!(stored_state(&client, ready).await, Some((0, 0)));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_pages_by_id_and_refuses_bad_filters() {
    let (db, client) = setup().await;
    let mut ids = idle::enqueue_many(&client, (0..5).map(|i| format!("u{i}@example.com")))
        .await
        .unwrap();
    let app = app(&client, false);
    for bad in [
        "state=zombie",
        "limit=0",
        "limit=100000",
        "after=x",
        "after=-3",
        "queue=not%20a%20queue",
        "task=%20",
    ] {
        let (status, body) = get(&app, &format!("{PREFIX}/jobs?{bad}")).await;
        // An empty (or blank) filter is no filter; everything else here is refused.
        if bad == "task=%20" {
            assert_eq!(status, StatusCode::OK, "{bad}: {body}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
    }
    // Two a page, newest first, following the "next page" links.
    let mut seen = Vec::new();
    let mut url = format!("{PREFIX}/jobs?queue=web-idle&limit=2");
    for _ in 0..10 {
        let (status, html) = get(&app, &url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {html}");
        let mut on_page: Vec<(usize, JobId)> = ids
            .iter()
            .filter_map(|id| {
                html.find(&format!("href=\"{PREFIX}/jobs/{id}\""))
                    .map(|at| (at, *id))
            })
            .collect();
        on_page.sort();
        assert!(on_page.len() <= 2, "two a page: {on_page:?}");
        seen.extend(on_page.into_iter().map(|(_, id)| id));
        let next = attrs(&html, "href")
            .into_iter()
            .find(|h| h.contains("after="))
            .filter(|_| html.contains("rel=\"next\""));
        match next {
            Some(next) => {
                assert!(!next.contains("offset"), "{next}");
                url = next.replace("&amp;", "&");
            }
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "every job once, newest first");
    // Read-only: no checkboxes or retry buttons on the dead list.
    dead_job(&client).await;
    let (_, html) = get(&app, &format!("{PREFIX}/jobs?state=dead")).await;
    assert!(html.contains("type=\"checkbox\""), "{html}");
    assert!(html.contains("data-action=\"retry-all\""), "{html}");
    let (_, html) = get(
        &Router::new().nest(
            PREFIX,
            web::Dashboard::new(client.clone()).read_only(true).router(),
        ),
        &format!("{PREFIX}/jobs?state=dead"),
    )
    .await;
    assert!(!html.contains("type=\"checkbox\""), "{html}");
    assert!(!html.contains("retry-all"), "{html}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_run_now_and_delete_change_the_tables() {
    let (db, client) = setup().await;
    let dead = [dead_job(&client).await, dead_job(&client).await];
    let scheduled = idle::with("later@example.com".to_owned())
        .delay(std::time::Duration::from_secs(3600))
        .enqueue(&client)
        .await
        .unwrap();
    let doomed = idle::enqueue(&client, "gone@example.com".into())
        .await
        .unwrap();
    let app = app(&client, false);
    let (_, html) = get(&app, PREFIX).await;
    let token = csrf_token(&html);
    let act = |action: &str, form: String| {
        post(
            &format!("{PREFIX}/actions/{action}"),
            &format!("{form}&csrf={token}"),
        )
    };

    let (status, location, _) = send(
        &app,
        act(
            "retry-all",
            "task=web.fails&back=%2Fjobs%3Fstate%3Ddead".into(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.unwrap(),
        format!("{PREFIX}/jobs?state=dead&flash=retried&arg=2")
    );
    for id in dead {
        assert_eq!(stored_state(&client, id).await, Some((0, 0)));
    }

    let (_, location, _) = send(
        &app,
        act(
            "run-now",
            format!("id={scheduled}&back=%2Fjobs%2F{scheduled}"),
        ),
    )
    .await;
    assert_eq!(
        location.unwrap(),
        format!("{PREFIX}/jobs/{scheduled}?flash=ran-now&arg={scheduled}")
    );
    assert_eq!(stored_state(&client, scheduled).await, Some((0, 0)));
    let (_, location, _) = send(&app, act("run-now", format!("id={scheduled}"))).await;
    assert_eq!(
        location.unwrap(),
        format!("{PREFIX}?flash=not-run-now&arg={scheduled}"),
        "not scheduled any more"
    );

    let (_, location, _) = send(
        &app,
        act("delete", format!("id={doomed}&back=%2Fjobs%2F{doomed}")),
    )
    .await;
    assert_eq!(
        location.unwrap(),
        format!("{PREFIX}/jobs?flash=deleted&arg={doomed}"),
        "its page is gone: to the list"
    );
    assert_eq!(stored_state(&client, doomed).await, None);
    let (status, _) = get(&app, &format!("{PREFIX}/jobs/{doomed}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    db.drop_db().await;
}
