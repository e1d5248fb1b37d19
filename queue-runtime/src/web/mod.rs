//! A server-rendered dashboard of the job database, as an axum [`Router`]
//! (cargo feature `web`).
//!
//! ```rust,no_run
//! use queue_runtime::{Client, web};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("mysql://queue:queue@127.0.0.1:3366/queue").await?;
//! // Mount it under any prefix of the host application (behind its auth layer):
//! let app: axum::Router = axum::Router::new().nest("/jobs", web::router(client.clone()));
//! // Or a dashboard that only shows, with no forms and every POST refused (403):
//! let ops: axum::Router = web::Dashboard::new(client).read_only(true).router();
//! # let _ = (app, ops);
//! # Ok(()) }
//! ```
//!
//! Pages (HTML rendered on the server, no JavaScript, no asset from the
//! internet; the stylesheet is served by the router itself):
//!
//! - `/`: per queue, jobs ready, scheduled, running, blocked (waiting for a
//!   concurrency slot), rate-limited (scheduled by a rate limit) and dead;
//!   whether the queue is paused, with pause and resume buttons; throughput
//!   over the last hour as an SVG chart; claim latency; InnoDB's history
//!   list length, with a warning above the runtime's own purge-lag
//!   threshold; the cluster-wide limits in use.
//! - `/jobs?state=&queue=&task=&after=&limit=`: jobs filtered by state,
//!   queue and task, in pages by keyset (`after` is the last id of the
//!   previous page, never an offset); dead jobs have checkboxes to retry a
//!   selection, and all dead jobs (of a task) can be retried at once.
//! - `/jobs/{id}`: one job: payload (pretty JSON), attempts and each
//!   attempt's error, times, lease owner, and the actions its state allows.
//! - `/recurring`: cron tasks with their expression, zone, last tick and
//!   next fire; `/runtimes`: each live runtime with its heartbeat.
//!
//! # Actions and CSRF
//!
//! Every action (retry one, the selected or every dead job of a task;
//! cancel; run a scheduled job now; delete; pause and resume a queue) is a
//! `POST` form to `{prefix}/actions/{name}`, answered by a `303 See Other`
//! back to the page it came from with the outcome in the query string
//! (`?flash=…`), so reloading never repeats it. A `POST` is refused with
//! `403 Forbidden` unless all of these hold:
//!
//! 1. the dashboard is not read-only ([`Dashboard::read_only`]);
//! 2. if the browser sent `Sec-Fetch-Site`, it is `same-origin`; otherwise,
//!    if it sent `Origin`, that origin's host is the request's `Host` (or
//!    `X-Forwarded-Host`, for a proxy that rewrites `Host`);
//! 3. the form's `csrf` field equals the router's secret token, compared in
//!    constant time. The token is 244 random bits made when the router is
//!    built ([`Dashboard::csrf_key`] sets it instead, for several replicas
//!    behind one load balancer) and is written into every form; another
//!    site cannot read it (the same-origin policy), so it cannot forge the
//!    form.
//!
//! Pages are sent with `Cache-Control: no-store`, a `Content-Security-Policy`
//! that allows only the router's own stylesheet and forms posting to itself,
//! and `frame-ancestors 'none'` against clickjacking.
//!
//! # Access control is the host application's
//!
//! The router checks no identity: anyone who reaches it may see every
//! payload and, unless it is read-only, act on every job. Mount it behind
//! the host application's authentication, e.g. a tower middleware on the
//! nested router; `docs/dashboard.md` shows one. When actions are on, every
//! page says so.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, NestedPath};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::client::Client;

mod actions;
mod chart;
mod csrf;
mod lists;
mod pages;
mod params;

/// The dashboard of `client`'s database with actions on: [`Dashboard::new`]
/// with its defaults. Same as `Dashboard::new(client).router()`.
pub fn router(client: Client) -> Router {
    Dashboard::new(client).router()
}

/// Configures the dashboard's [`Router`]: read-only or not, and the CSRF
/// token.
#[derive(Clone, Debug)]
#[must_use = "a dashboard serves only after `.router()`"]
pub struct Dashboard {
    client: Client,
    read_only: bool,
    csrf_key: Option<String>,
}

impl Dashboard {
    /// A dashboard of `client`'s database, with actions on and a random
    /// CSRF token.
    pub fn new(client: Client) -> Self {
        Dashboard {
            client,
            read_only: false,
            csrf_key: None,
        }
    }

    /// With `true`, pages show no form and every `POST` is refused with
    /// `403 Forbidden`. Default `false`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The CSRF token written into every form, instead of a random one: give
    /// every replica of the host application the same secret (16 to 256
    /// visible ASCII characters; anything else is ignored and a random token
    /// used), so that a form rendered by one is accepted by another.
    pub fn csrf_key(mut self, key: impl Into<String>) -> Self {
        self.csrf_key = Some(key.into());
        self
    }

    /// The router: mount it at the root or under any prefix
    /// (`Router::nest("/jobs", …)`); every link and form of its pages is
    /// built from the prefix it is nested at.
    pub fn router(self) -> Router {
        let csrf = self
            .csrf_key
            .as_deref()
            .and_then(csrf::Csrf::from_key)
            .unwrap_or_else(csrf::Csrf::random);
        let shared = Arc::new(Shared {
            client: self.client,
            read_only: self.read_only,
            csrf,
        });
        Router::new()
            .route("/", get(pages::overview))
            .route("/jobs", get(lists::jobs))
            .route("/jobs/{id}", get(pages::job))
            .route("/recurring", get(pages::recurring))
            .route("/runtimes", get(lists::runtimes))
            .route("/assets/dashboard.css", get(stylesheet))
            .route("/actions/{action}", post(actions::post))
            .fallback(pages::not_found)
            .with_state(shared)
    }
}

/// What every handler shares.
#[derive(Debug)]
struct Shared {
    client: Client,
    read_only: bool,
    csrf: csrf::Csrf,
}

type AppState = Arc<Shared>;

/// The request as the pages see it: where the router is mounted, and the
/// path it was asked for (relative to the mount point).
#[derive(Clone, Debug)]
struct Here {
    /// The prefix the router is nested at ("" at the root), no trailing `/`.
    base: String,
    /// The path and query within the router, as the target of a form's
    /// redirect back (without a previous flash).
    back: String,
}

impl Here {
    /// `path` (absolute within the router, starting with `/`) under the
    /// prefix the router is mounted at.
    fn href(&self, path: &str) -> String {
        if !self.base.is_empty()
            && let Some(rest) = path.strip_prefix('/')
            && (rest.is_empty() || rest.starts_with('?'))
        {
            // `nest("/jobs", …)` serves its root at "/jobs", not "/jobs/".
            return format!("{}{rest}", self.base);
        }
        format!("{}{path}", self.base)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Here {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let base = parts
            .extensions
            .get::<NestedPath>()
            .map(|p| p.as_str().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let path = parts.uri.path();
        let query = params::without_flash(parts.uri.query().unwrap_or(""));
        let back = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        Ok(Here { base, back })
    }
}

async fn stylesheet() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        include_str!("dashboard.css"),
    )
        .into_response()
}

/// The headers of every page.
fn page_response(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                     form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        html,
    )
        .into_response()
}
