//! The list pages: jobs (filtered, in keyset pages) and live runtimes.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::html;
use queue_core::JobState;

use super::pages::{Nav, at, error, failed, page};
use super::params::JobsQuery;
use super::{AppState, Here, page_response};
use crate::JobFilter;

/// The form id that the checkboxes of dead jobs belong to (they sit in the
/// table, outside the form: forms cannot nest, and each row has its own).
const SELECTED_FORM: &str = "retry-selected";

/// `/jobs?state=&queue=&task=&after=&limit=`.
pub(super) async fn jobs(State(st): State<AppState>, here: Here, uri: Uri) -> Response {
    let p = page(&st, &here, &uri);
    let q = match JobsQuery::parse(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(&st, &here, StatusCode::BAD_REQUEST, &e),
    };
    let filter = JobFilter {
        state: q.state,
        queue: q.queue.clone(),
        task: q.task.clone(),
        after: q.after,
        limit: q.limit,
    };
    let page_of_jobs = match st.client.jobs(&filter).await {
        Ok(jobs) => jobs,
        Err(e) => return failed(&st, &here, &e),
    };
    let now = st.client.now();
    let next = page_of_jobs.next.map(|next| {
        let mut n = q.clone();
        n.after = Some(next);
        format!("{}?{}", p.href("/jobs"), n.to_query())
    });
    let first = q.after.map(|_| {
        let mut f = q.clone();
        f.after = None;
        match f.to_query() {
            s if s.is_empty() => p.href("/jobs"),
            s => format!("{}?{s}", p.href("/jobs")),
        }
    });
    let any_dead = page_of_jobs.jobs.iter().any(|j| j.state == JobState::Dead);
    let writable = !st.read_only;
    let body = html! {
        form.filters method="get" action=(p.href("/jobs")) {
            label { "state"
                select name="state" {
                    option value="" selected[q.state.is_none()] { "any" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[q.state == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "queue" input type="text" name="queue" value=(q.queue.as_deref().unwrap_or("")); }
            label { "task" input type="text" name="task" value=(q.task.as_deref().unwrap_or("")); }
            label { "per page" input type="number" name="limit" min="1" max=(super::params::MAX_LIMIT) value=(q.limit); }
            button type="submit" { "Filter" }
        }
        @if writable && q.state == Some(JobState::Dead) {
            div.actions {
                @let label = match &q.task {
                    Some(t) => format!("Retry every dead job of {t}"),
                    None => "Retry every dead job".to_owned(),
                };
                @let task = q.task.clone().unwrap_or_default();
                (p.action("retry-all", &[("task", task.as_str())], &label, &task, false))
            }
        }
        @if page_of_jobs.jobs.is_empty() && next.is_some() {
            p.empty { "No match among the jobs examined for this page (one page looks at up to 50,000 ids); the next page goes on." }
        } @else if page_of_jobs.jobs.is_empty() {
            p.empty { "No job matches." }
        } @else {
            @if writable && any_dead {
                form id=(SELECTED_FORM) method="post" action=(p.href("/actions/retry-selected")) {
                    (p.hidden())
                }
            }
            table.jobs {
                thead { tr {
                    @if writable && any_dead { th { span.note { "retry" } } }
                    th.num { "id" } th { "task" } th { "queue" } th { "state" } th.num { "priority" }
                    th.num { "attempts" } th { "run at" } th { "updated" } th { "last error" }
                } }
                tbody {
                    @for j in &page_of_jobs.jobs {
                        tr {
                            @if writable && any_dead {
                                td {
                                    @if j.state == JobState::Dead {
                                        input type="checkbox" name="id" value=(j.id) form=(SELECTED_FORM) aria-label=(format!("select job {}", j.id));
                                    }
                                }
                            }
                            td.num { a href=(p.href(&format!("/jobs/{}", j.id))) { (j.id) } }
                            td { code { (j.task) } }
                            td { (j.queue) }
                            td { span class=(format!("badge state-{}", j.state)) { (j.state) } }
                            td.num { (j.priority) }
                            td.num { (j.attempts) "/" (j.max_attempts) }
                            td { (at(j.run_at, now)) }
                            td { (at(j.updated_at, now)) }
                            td.error-text title=(j.last_error.as_deref().unwrap_or("")) { (j.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            @if writable && any_dead {
                p { button type="submit" form=(SELECTED_FORM) data-action="retry-selected" { "Retry selected dead jobs" } }
            }
        }
        p.pager {
            @if let Some(first) = &first { a href=(first) { "« first page" } }
            @if let Some(next) = &next { a href=(next) rel="next" { "next page »" } }
        }
    };
    page_response(StatusCode::OK, p.render("Jobs", Nav::Jobs, body))
}

/// `/runtimes`.
pub(super) async fn runtimes(State(st): State<AppState>, here: Here, uri: Uri) -> Response {
    let p = page(&st, &here, &uri);
    let runtimes = match st.client.runtimes().await {
        Ok(r) => r,
        Err(e) => return failed(&st, &here, &e),
    };
    let now = st.client.now();
    let body = html! {
        @if runtimes.is_empty() {
            p.empty { "No runtime is running on this database." }
        } @else {
            table {
                thead { tr {
                    th { "owner" } th { "host" } th.num { "pid" } th { "queues" } th.num { "concurrency" } th.num { "in flight" }
                    th { "started" } th { "last heartbeat" }
                } }
                tbody {
                    @for r in &runtimes {
                        tr {
                            td { code { (r.owner) } }
                            td { (r.host) }
                            td.num { (r.pid) }
                            td { (r.queues.join(", ")) }
                            td.num { (r.concurrency) }
                            td.num { (r.in_flight) }
                            td { (at(r.started_at, now)) }
                            td { (at(r.heartbeat_at, now)) }
                        }
                    }
                }
            }
        }
    };
    page_response(StatusCode::OK, p.render("Runtimes", Nav::Runtimes, body))
}
