//! `POST {prefix}/actions/{action}`: checks, acts, and redirects back
//! (`303 See Other`) with the outcome as a flash message.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use queue_core::JobId;

use super::params::{self, Flash, FlashKind};
use super::{AppState, Here, pages};
use crate::error::Error;

/// Where a form may send the browser back to: a path within the dashboard
/// (from the form's `back` field), or its overview.
fn back_path(back: Option<&str>) -> &str {
    match back {
        Some(b)
            if b.starts_with('/')
                && !b.starts_with("//")
                && !b.starts_with("/\\")
                && b.len() <= 2048
                && b.bytes().all(|c| c.is_ascii_graphic()) =>
        {
            b
        }
        _ => "/",
    }
}

/// The one job id of a form (`id`).
fn one_id(form: &[(String, String)]) -> Result<JobId, String> {
    let id = params::first(form, "id").ok_or("the form has no job `id`")?;
    params::job_id(id.trim())
}

pub(super) async fn post(
    State(st): State<AppState>,
    here: Here,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if st.read_only {
        return pages::error(
            &st,
            &here,
            StatusCode::FORBIDDEN,
            "This dashboard is read-only: it takes no action.",
        );
    }
    let form = params::pairs(&body);
    if let Err(why) = st.csrf.check(&headers, params::first(&form, "csrf")) {
        return pages::error(
            &st,
            &here,
            StatusCode::FORBIDDEN,
            &format!("Refused: {why}."),
        );
    }
    let mut back = match back_path(params::first(&form, "back")).split_once('?') {
        Some((path, query)) => match params::without_flash(query) {
            q if q.is_empty() => path.to_owned(),
            q => format!("{path}?{q}"),
        },
        None => back_path(params::first(&form, "back")).to_owned(),
    };
    let bad = |msg: String| pages::error(&st, &here, StatusCode::BAD_REQUEST, &msg);
    let client = &st.client;
    let done: Result<Flash, Error> = match action.as_str() {
        "retry" => {
            let id = match one_id(&form) {
                Ok(id) => id,
                Err(e) => return bad(e),
            };
            match client.retry_dead(id).await {
                Ok(()) => Ok(Flash::new(FlashKind::Retried, 1)),
                Err(Error::NotDead(_)) => Ok(Flash::new(FlashKind::NotDead, id)),
                Err(e) => Err(e),
            }
        }
        "retry-selected" => {
            let mut ids = Vec::new();
            for (_, v) in form.iter().filter(|(k, _)| k == "id") {
                match params::job_id(v.trim()) {
                    Ok(id) => ids.push(id),
                    Err(e) => return bad(e),
                }
            }
            if ids.len() > params::MAX_SELECTED {
                return bad(format!(
                    "{} jobs selected; at most {} at once",
                    ids.len(),
                    params::MAX_SELECTED
                ));
            }
            retry_each(client, &ids).await
        }
        "retry-all" => {
            let task = params::first(&form, "task")
                .map(str::trim)
                .filter(|t| !t.is_empty());
            client
                .retry_dead_all(task)
                .await
                .map(|n| Flash::new(FlashKind::Retried, n))
        }
        "cancel" | "delete" | "run-now" => {
            let id = match one_id(&form) {
                Ok(id) => id,
                Err(e) => return bad(e),
            };
            let (done, yes, no) = match action.as_str() {
                "cancel" => (
                    client.cancel(id).await,
                    FlashKind::Cancelled,
                    FlashKind::NotCancelled,
                ),
                "delete" => (
                    client.delete_job(id).await,
                    FlashKind::Deleted,
                    FlashKind::NotDeleted,
                ),
                _ => (
                    client.run_now(id).await,
                    FlashKind::RanNow,
                    FlashKind::NotRunNow,
                ),
            };
            done.map(|done| {
                // The job's own page is gone once it is: back to the list.
                if done && action != "run-now" && back.starts_with("/jobs/") {
                    back = "/jobs".to_owned();
                }
                Flash::new(if done { yes } else { no }, id)
            })
        }
        "pause" | "resume" => {
            let Some(queue) = params::first(&form, "queue") else {
                return bad("the form has no `queue`".to_owned());
            };
            let r = if action == "pause" {
                client.pause_queue(queue).await
            } else {
                client.resume_queue(queue).await
            };
            let kind = if action == "pause" {
                FlashKind::Paused
            } else {
                FlashKind::Resumed
            };
            r.map(|()| Flash::new(kind, queue))
        }
        _ => return pages::error(&st, &here, StatusCode::NOT_FOUND, "No such action."),
    };
    match done {
        Ok(flash) => {
            let sep = if back.contains('?') { '&' } else { '?' };
            let to = format!("{}{sep}{}", here.href(&back), flash.to_query());
            Redirect::to(&to).into_response()
        }
        Err(e) => pages::failed(&st, &here, &e),
    }
}

/// Retries each of `ids` that is dead; the flash counts those that were.
async fn retry_each(client: &crate::Client, ids: &[JobId]) -> Result<Flash, Error> {
    if ids.is_empty() {
        return Ok(Flash::new(FlashKind::NoneSelected, ""));
    }
    let mut retried = 0u64;
    for id in ids {
        match client.retry_dead(*id).await {
            Ok(()) => retried += 1,
            Err(Error::NotDead(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Flash::new(FlashKind::Retried, retried))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_send_the_browser_back_within_the_dashboard_only() {
        assert_eq!(back_path(Some("/jobs?state=dead")), "/jobs?state=dead");
        for evil in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example",
            "",
            "/a b",
            "/\r\nX: y",
        ] {
            assert_eq!(back_path(Some(evil)), "/", "{evil:?}");
        }
        assert_eq!(back_path(None), "/");
    }
}
