//! The pages: a layout, and one handler per page.

use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use queue_core::JobState;

use super::params::{Flash, JobsQuery};
use super::{AppState, Here, chart, page_response, params};
use crate::admin::{LimitKind, QueueCounts, Waiting};
use crate::runtime::monitor::PURGE_LAG_HISTORY;

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Jobs,
    Recurring,
    Runtimes,
    None,
}

const NAV: [(Nav, &str, &str); 4] = [
    (Nav::Overview, "/", "Overview"),
    (Nav::Jobs, "/jobs", "Jobs"),
    (Nav::Recurring, "/recurring", "Recurring"),
    (Nav::Runtimes, "/runtimes", "Runtimes"),
];

/// What every page is rendered with.
pub(super) struct Page<'a> {
    pub st: &'a AppState,
    pub here: &'a Here,
    pub flash: Option<Flash>,
}

impl Page<'_> {
    pub(super) fn href(&self, path: &str) -> String {
        self.here.href(path)
    }

    /// A one-button form posting `action` with `fields`; nothing when the
    /// dashboard is read-only. `target` names what it acts on, for tests
    /// and scripts (`data-target`).
    pub(super) fn action(
        &self,
        action: &str,
        fields: &[(&str, &str)],
        label: &str,
        target: &str,
        danger: bool,
    ) -> Markup {
        if self.st.read_only {
            return html! {};
        }
        html! {
            form.inline method="post" action=(self.href(&format!("/actions/{action}"))) {
                (self.hidden())
                @for (name, value) in fields {
                    input type="hidden" name=(name) value=(value);
                }
                button.danger[danger] type="submit" data-action=(action) data-target=(target) { (label) }
            }
        }
    }

    /// The hidden fields of every form: the CSRF token and the page to go
    /// back to.
    pub(super) fn hidden(&self) -> Markup {
        html! {
            input type="hidden" name="csrf" value=(self.st.csrf.token());
            input type="hidden" name="back" value=(self.here.back);
        }
    }

    /// The whole HTML document.
    pub(super) fn render(&self, title: &str, nav: Nav, body: Markup) -> String {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · queue-runtime" }
                    link rel="stylesheet" href=(self.href("/assets/dashboard.css"));
                }
                body {
                    header {
                        a.brand href=(self.href("/")) { "queue-runtime" }
                        nav {
                            @for (n, path, label) in NAV {
                                a.active[n == nav] href=(self.href(path)) { (label) }
                            }
                        }
                        @if self.st.read_only {
                            span.mode title="Pages show no forms; every POST is refused." { "read-only" }
                        } @else {
                            span.mode.live title="Whoever reaches this page can act on every job: mount the dashboard behind the host application's authentication (docs/dashboard.md)." {
                                "actions on · access control is the host application's"
                            }
                        }
                    }
                    main {
                        @if let Some(f) = &self.flash {
                            p.flash.warning[f.is_warning()] role="status" { (f.text()) }
                        }
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string()
    }
}

pub(super) fn page<'a>(st: &'a AppState, here: &'a Here, uri: &Uri) -> Page<'a> {
    Page {
        st,
        here,
        flash: uri.query().and_then(Flash::parse),
    }
}

/// An error page with `status`.
pub(super) fn error(st: &AppState, here: &Here, status: StatusCode, message: &str) -> Response {
    let p = Page {
        st,
        here,
        flash: None,
    };
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        p.error { (message) }
        p { a href=(p.href("/")) { "Back to the overview" } }
    };
    page_response(status, p.render(title, Nav::None, body))
}

/// A database error, as a 500 page (or 400 for an argument the runtime refused).
pub(super) fn failed(st: &AppState, here: &Here, e: &crate::Error) -> Response {
    let status = if matches!(e, crate::Error::InvalidArgument(_)) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(st, here, status, &e.to_string())
}

pub(super) async fn not_found(State(st): State<AppState>, here: Here) -> Response {
    error(&st, &here, StatusCode::NOT_FOUND, "No such page.")
}

/// A time, absolute and relative to `now`.
pub(super) fn at(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) {
            (t.format("%Y-%m-%d %H:%M:%S")) " " span.rel { "(" (relative(t, now)) ")" }
        }
    }
}

/// "in 3m 5s", "2h ago", "now".
pub(super) fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let abs = secs.unsigned_abs();
    if abs < 1 {
        return "now".to_owned();
    }
    let text = match abs {
        0..60 => format!("{abs}s"),
        60..3600 => format!("{}m {}s", abs / 60, abs % 60),
        3600..86_400 => format!("{}h {}m", abs / 3600, abs % 3600 / 60),
        _ => format!("{}d {}h", abs / 86_400, abs % 86_400 / 3600),
    };
    if secs > 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A link to the job list with these filters.
pub(super) fn jobs_link(p: &Page<'_>, state: Option<JobState>, queue: Option<&str>) -> String {
    let q = JobsQuery {
        state,
        queue: queue.map(str::to_owned),
        limit: params::DEFAULT_LIMIT,
        ..JobsQuery::default()
    };
    let query = q.to_query();
    if query.is_empty() {
        p.href("/jobs")
    } else {
        format!("{}?{query}", p.href("/jobs"))
    }
}

/// A count linking to the jobs it counts (a zero links nowhere).
fn count_cell(
    p: &Page<'_>,
    n: u64,
    at_least: bool,
    state: Option<JobState>,
    queue: Option<&str>,
) -> Markup {
    html! {
        td.num.zero[n == 0] title=[at_least.then_some("at least: past the cap stats() counts to")] {
            @if at_least { "≥" }
            @if n == 0 { "0" } @else { a href=(jobs_link(p, state, queue)) { (n) } }
        }
    }
}

fn counts_row(p: &Page<'_>, name: Option<&str>, c: &QueueCounts, paused: Option<bool>) -> Markup {
    let l = c.at_least;
    html! {
        tr.paused[paused == Some(true)] {
            th scope="row" {
                @if let Some(name) = name { (name) } @else { "all queues" }
            }
            (count_cell(p, c.ready, l.ready, Some(JobState::Ready), name))
            (count_cell(p, c.scheduled, l.scheduled, Some(JobState::Scheduled), name))
            (count_cell(p, c.running, l.running, Some(JobState::Running), name))
            (count_cell(p, c.blocked, l.blocked, Some(JobState::Blocked), name))
            td.num.zero[c.rate_limited == 0] title="Scheduled by a rate limit (counted among scheduled)" {
                @if l.scheduled { "≥" } (c.rate_limited)
            }
            (count_cell(p, c.dead, l.dead, Some(JobState::Dead), name))
            (count_cell(p, c.total(), l.any(), None, name))
            td {
                @match (paused, name) {
                    (Some(true), Some(q)) => {
                        span.badge.paused { "paused" } " "
                        (p.action("resume", &[("queue", q)], "Resume", q, false))
                    }
                    (Some(false), Some(q)) => {
                        span.badge { "active" } " "
                        (p.action("pause", &[("queue", q)], "Pause", q, false))
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `/`: counts per queue and state, pause buttons, throughput, health.
pub(super) async fn overview(State(st): State<AppState>, here: Here, uri: Uri) -> Response {
    let p = page(&st, &here, &uri);
    let stats = match st.client.stats().await {
        Ok(s) => s,
        Err(e) => return failed(&st, &here, &e),
    };
    let throughput = match throughput_minutes(&st.client).await {
        Ok(t) => t,
        Err(e) => return failed(&st, &here, &e),
    };
    let mut queues = stats.queues.clone();
    for q in &stats.paused_queues {
        queues.entry(q.clone()).or_default();
    }
    let hll = stats.history_list_length;
    let body = html! {
        @if let Some(h) = hll.filter(|h| *h > PURGE_LAG_HISTORY) {
            p.warning role="alert" {
                strong { "InnoDB's history list is long: " (h) " undo records" }
                " (above " (PURGE_LAG_HISTORY) ", the runtime's purge-lag threshold). "
                "A long-open transaction or read view is keeping purge from removing old row versions; "
                "claims slow down as the list grows. Look for old transactions in "
                code { "information_schema.INNODB_TRX" } "."
            }
        }
        section {
            h2 { "Queues" }
            @if queues.is_empty() {
                p.empty { "No jobs and no paused queue." }
            } @else {
                table.counts {
                    thead { tr {
                        th { "queue" } th.num { "ready" } th.num { "scheduled" } th.num { "running" }
                        th.num title="Waiting for a slot of a concurrency limit" { "blocked" }
                        th.num title="Scheduled by a rate limit" { "rate-limited" }
                        th.num { "dead" } th.num { "total" } th { "state" }
                    } }
                    tbody {
                        @for (name, c) in &queues {
                            (counts_row(&p, Some(name), c, Some(stats.paused_queues.contains(name))))
                        }
                    }
                    tfoot { (counts_row(&p, None, &stats.total, None)) }
                }
                @if !stats.exact {
                    p.note {
                        "More than 10,000 jobs: counts marked ≥ are lower bounds (each state is counted up to 10,000)."
                        @if let Some(n) = stats.estimated_jobs { " InnoDB estimates about " (n) " jobs in all." }
                    }
                }
            }
        }
        section {
            h2 { "Throughput, last hour" }
            (chart::throughput(&throughput))
        }
        section.health {
            h2 { "Health" }
            dl {
                dt { "Claim latency (p50 / p99)" }
                dd {
                    @if let Some((p50, p99)) = stats.claim_latency {
                        (millis(p50)) " / " (millis(p99))
                    } @else {
                        span.empty { "no claim by a runtime of this process in the last minute" }
                    }
                }
                dt { "Start lag (p50 / p99)" }
                dd {
                    @if let Some((p50, p99)) = stats.start_lag {
                        (millis(p50)) " / " (millis(p99))
                    } @else {
                        span.empty { "no start by a runtime of this process in the last minute" }
                    }
                }
                dt { "InnoDB history list length" }
                dd {
                    @match hll {
                        Some(h) => { span.bad[h > PURGE_LAG_HISTORY] { (h) } " (warning above " (PURGE_LAG_HISTORY) ")" }
                        None => { span.empty { "not exposed by this server" } }
                    }
                }
            }
        }
        @if !stats.limits.is_empty() {
            section {
                h2 { "Limits in use" }
                table {
                    thead { tr { th { "task" } th { "key" } th { "limit" } th.num { "active" } th.num { "waiting" } } }
                    tbody {
                        @for l in &stats.limits {
                            tr {
                                td { (l.task) }
                                td { @if let Some(k) = &l.key { code { (k) } } }
                                td {
                                    @match l.kind {
                                        LimitKind::Concurrency => { (l.limit) " at once" }
                                        LimitKind::Rate { per, .. } => { (l.limit) " per " (format!("{per:?}")) }
                                    }
                                }
                                td.num { (l.active) }
                                td.num { (l.waiting) }
                            }
                        }
                    }
                }
            }
        }
        @if !stats.unknown_tasks.is_empty() {
            section {
                h2 { "Jobs of tasks this process does not declare" }
                p.note { "Left by another deployment, or inserted with a wrong task name; a runtime that knows the task runs them." }
                ul {
                    @for (task, n) in &stats.unknown_tasks {
                        li { code { (task) } ": " (n) }
                    }
                }
            }
        }
    };
    page_response(StatusCode::OK, p.render("Overview", Nav::Overview, body))
}

/// The payload, pretty-printed if it is JSON.
fn pretty(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| payload.to_owned())
}

/// `/jobs/{id}`.
pub(super) async fn job(
    State(st): State<AppState>,
    here: Here,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let p = page(&st, &here, &uri);
    let id = match id
        .map_err(|e| e.body_text())
        .and_then(|Path(id)| params::job_id(&id))
    {
        Ok(id) => id,
        Err(e) => return error(&st, &here, StatusCode::BAD_REQUEST, &e),
    };
    let job = match st.client.job(id).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            return error(
                &st,
                &here,
                StatusCode::NOT_FOUND,
                &format!(
                    "No job {id}: it never existed, succeeded (succeeded jobs are deleted), was cancelled or was purged."
                ),
            );
        }
        Err(e) => return failed(&st, &here, &e),
    };
    let now = st.client.now();
    let ids = id.to_string();
    let target = ids.as_str();
    let body = html! {
        div.actions {
            @match job.state {
                JobState::Dead => {
                    (p.action("retry", &[("id", target)], "Retry", target, false))
                    (p.action("delete", &[("id", target)], "Delete", target, true))
                }
                JobState::Scheduled => {
                    (p.action("run-now", &[("id", target)], "Run now", target, false))
                    (p.action("cancel", &[("id", target)], "Cancel", target, true))
                }
                JobState::Ready | JobState::Blocked => {
                    (p.action("cancel", &[("id", target)], "Cancel", target, true))
                }
                _ => { span.note { "A running job runs to its end; it cannot be cancelled or deleted." } }
            }
        }
        dl.job {
            dt { "state" } dd { span class=(format!("badge state-{}", job.state)) { (job.state) } }
            dt { "task" } dd { code { (job.task) } }
            dt { "queue" } dd { a href=(jobs_link(&p, None, Some(&job.queue))) { (job.queue) } }
            dt { "priority" } dd { (job.priority) }
            dt { "attempts" } dd { (job.attempts) " of " (job.max_attempts) }
            dt { "run at" } dd { (at(job.run_at, now)) }
            (job_extra(&job, now))
            @if let Some(w) = &job.waiting {
                dt { "waiting for" }
                dd {
                    @match w {
                        Waiting::Concurrency { key } => {
                            "a slot of its concurrency limit"
                            @if let Some(k) = key { " (key " code { (k) } ")" }
                        }
                        Waiting::Rate { key, window } => {
                            "its rate limit's window at " (at(*window, now))
                            @if let Some(k) = key { " (key " code { (k) } ")" }
                        }
                    }
                }
            }
            @if let Some(e) = &job.last_error {
                dt { "last error" } dd { pre.error { (e) } }
            }
        }
        (job_errors(&job, now))
        h2 { "Payload" }
        pre.payload { (pretty(&job.payload)) }
    };
    page_response(
        StatusCode::OK,
        p.render(&format!("Job {id}"), Nav::Jobs, body),
    )
}

/// `/recurring`.
pub(super) async fn recurring(State(st): State<AppState>, here: Here, uri: Uri) -> Response {
    let p = page(&st, &here, &uri);
    let tasks = match st.client.recurring().await {
        Ok(t) => t,
        Err(e) => return failed(&st, &here, &e),
    };
    let now = st.client.now();
    let body = html! {
        @if tasks.is_empty() {
            p.empty { "No recurring task is registered in this database (a runtime registers its cron tasks when it starts)." }
        } @else {
            table {
                thead { tr { th { "task" } th { "expression" } th { "zone" } th { "last tick" } th { "next fire" } } }
                tbody {
                    @for t in &tasks {
                        tr {
                            td { code { (t.task) } }
                            td { code { (t.expression) } }
                            td { (t.timezone) }
                            td { (at(t.last_tick, now)) }
                            td {
                                @if let Some(next) = t.next_tick { (at(next, now)) } @else { span.empty { "never" } }
                            }
                        }
                    }
                }
            }
        }
    };
    page_response(
        StatusCode::OK,
        p.render("Recurring tasks", Nav::Recurring, body),
    )
}

/// Jobs started, succeeded, failed and dead per minute over the last hour,
/// cluster-wide (oldest first).
async fn throughput_minutes(client: &crate::Client) -> crate::Result<Vec<[u64; 4]>> {
    Ok(client
        .throughput(Duration::from_secs(3600))
        .await?
        .iter()
        .map(|m| [m.started, m.succeeded, m.failed, m.dead])
        .collect())
}

/// The job's times and lease.
fn job_extra(job: &crate::JobInfo, now: DateTime<Utc>) -> Markup {
    html! {
        dt { "enqueued" } dd { (at(job.created_at, now)) }
        dt { "updated" } dd { (at(job.updated_at, now)) }
        @if let Some(owner) = &job.lease_owner {
            dt { "lease owner" } dd { code { (owner) } }
        }
        @if let Some(until) = job.lease_expires_at {
            dt { "lease until" } dd { (at(until, now)) }
        }
    }
}

/// Every failed attempt's error, oldest first.
fn job_errors(job: &crate::JobInfo, now: DateTime<Utc>) -> Markup {
    html! {
        h2 { "Attempts" }
        @if job.errors.is_empty() {
            p.empty { "No failed attempt recorded." }
        } @else {
            table.attempts {
                thead { tr { th.num { "attempt" } th { "failed at" } th { "error" } } }
                tbody {
                    @for e in &job.errors {
                        tr {
                            td.num { (e.attempt) }
                            td { (at(e.at, now)) }
                            td { pre.error { (e.error) } }
                        }
                    }
                }
            }
            @if job.errors.len() >= 20 {
                p.note { "Only the last 20 failed attempts are kept." }
            }
        }
    }
}
