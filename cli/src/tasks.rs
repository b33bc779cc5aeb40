//! `shardjob tasks …`: delayed tasks straight from the store (PostgreSQL), no etcd needed.

use chrono::{DateTime, Utc};
use serde_json::json;
use shardjob_tasks::{NewTask, Tasks, TasksConfig, Uuid};

use crate::args::TasksCmd;
use crate::render::table;

fn id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|_| format!("{text:?} is not a task id (a UUID)"))
}

fn time(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("--{field} {text:?} is not an RFC 3339 time (e.g. 2026-12-01T18:00:00Z): {e}")
        })
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
    )
}

fn to_json(v: impl serde::Serialize) -> String {
    serde_json::to_string(&v).unwrap_or_default()
}

/// Runs one `tasks` command; returns what to print.
pub async fn run(urls: &[String], cmd: &TasksCmd, as_json: bool) -> Result<String, String> {
    let tasks = Tasks::connect(TasksConfig::new(urls.to_vec()).background(false))
        .await
        .map_err(|e| e.to_string())?;
    match cmd {
        TasksCmd::Submit {
            queue,
            at,
            after,
            payload,
            dedupe_key,
            max_attempts,
        } => {
            let mut task = match (at, after) {
                (Some(t), _) => NewTask::at(time("at", t)?),
                (None, Some(d)) => NewTask::after(*d),
                (None, None) => NewTask::after(std::time::Duration::ZERO),
            };
            if let Some(p) = payload {
                let v: serde_json::Value =
                    serde_json::from_str(p).map_err(|e| format!("--payload is not JSON: {e}"))?;
                task = task.payload(v);
            }
            if let Some(k) = dedupe_key {
                task = task.dedupe_key(k.clone());
            }
            if let Some(n) = max_attempts {
                task = task.max_attempts(*n);
            }
            let s = tasks.submit(queue, task).await.map_err(|e| e.to_string())?;
            Ok(if as_json {
                to_json(s)
            } else if s.duplicate {
                format!("{} (the dedupe key was taken: the existing task)", s.id)
            } else {
                s.id.to_string()
            })
        }
        TasksCmd::Get { id: text } => {
            let st = tasks
                .get(id(text)?)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no task {text}"))?;
            if as_json {
                return Ok(to_json(&st));
            }
            let t = &st.task;
            Ok(format!(
                "id        {}\nqueue     {} (segment {})\nstatus    {}\ndue       {}\nattempts  {} of {}\nstarted   {}\nfinished  {}\nerror     {}\npayload   {}",
                t.id,
                t.queue,
                t.segment,
                t.status,
                when(Some(t.due_at)),
                t.attempt,
                t.max_attempts
                    .map_or_else(|| "the queue's policy".into(), |m| m.to_string()),
                when(t.started_at),
                when(t.finished_at),
                t.last_error.as_deref().unwrap_or("-"),
                t.payload
            ))
        }
        TasksCmd::Cancel { id: text } => {
            let outcome = tasks.cancel(id(text)?).await.map_err(|e| e.to_string())?;
            if outcome == shardjob_tasks::CancelOutcome::Unknown {
                return Err(format!("no task {text}"));
            }
            let word = to_json(outcome).trim_matches('"').to_owned();
            Ok(if as_json {
                to_json(json!({"id": text, "outcome": outcome}))
            } else {
                word
            })
        }
        TasksCmd::List {
            queue,
            status,
            due_before,
            cursor,
            limit,
        } => {
            let before = due_before
                .as_deref()
                .map(|t| time("due-before", t))
                .transpose()?;
            let page = tasks
                .list(queue, status.as_deref(), before, cursor.as_deref(), *limit)
                .await
                .map_err(|e| e.to_string())?;
            if as_json {
                return Ok(to_json(&page));
            }
            let rows: Vec<Vec<String>> = page
                .tasks
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        when(Some(t.due_at)),
                        t.status.clone(),
                        t.attempt.to_string(),
                        t.segment.to_string(),
                        t.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            let mut out = table(
                &["ID", "DUE", "STATUS", "ATTEMPT", "SEGMENT", "LAST ERROR"],
                &rows,
            );
            if let Some(next) = page.next {
                out.push_str(&format!("\nnext page: --cursor {next}"));
            }
            Ok(out)
        }
        TasksCmd::Attempts { id: text } => {
            let st = tasks
                .get(id(text)?)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no task {text}"))?;
            if as_json {
                return Ok(to_json(json!({"attempts": st.attempts})));
            }
            let rows: Vec<Vec<String>> = st
                .attempts
                .iter()
                .map(|a| {
                    vec![
                        a.attempt.to_string(),
                        a.instance.clone(),
                        a.token.to_string(),
                        when(Some(a.started_at)),
                        when(Some(a.ended_at)),
                        a.outcome.clone(),
                        a.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "ATTEMPT", "INSTANCE", "TOKEN", "STARTED", "ENDED", "OUTCOME", "ERROR",
                ],
                &rows,
            ))
        }
        TasksCmd::Requeue { id: text, extra } => {
            match tasks
                .requeue(id(text)?, *extra)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(t) if as_json => Ok(to_json(&t)),
                Some(t) => Ok(format!(
                    "{} pending again, due {}",
                    t.id,
                    when(Some(t.due_at))
                )),
                None => Err(format!(
                    "{text} is not failed or cancelled: nothing to requeue"
                )),
            }
        }
    }
}

/// `shardjob history JOB`.
pub async fn history(
    urls: &[String],
    job: &str,
    shard: Option<u32>,
    since: Option<&str>,
    limit: usize,
    as_json: bool,
) -> Result<String, String> {
    let since = since.map(|t| time("since", t)).transpose()?;
    let tasks = Tasks::connect(TasksConfig::new(urls.to_vec()).background(false))
        .await
        .map_err(|e| e.to_string())?;
    let runs = tasks
        .history(job, shard, since, limit)
        .await
        .map_err(|e| e.to_string())?;
    if as_json {
        return Ok(to_json(json!({"executions": runs})));
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                when(Some(r.fire_time)),
                r.shard.to_string(),
                r.instance.clone(),
                r.token.to_string(),
                when(Some(r.started_at)),
                format!("{} ms", (r.ended_at - r.started_at).num_milliseconds()),
                r.outcome.clone(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "FIRE", "SHARD", "INSTANCE", "TOKEN", "STARTED", "TOOK", "OUTCOME",
        ],
        &rows,
    ))
}
