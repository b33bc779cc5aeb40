//! Inserting tasks: one statement per batch and server that records dedupe keys, inserts the
//! tasks whose key is new and announces those due soon on [`super::CHANNEL`] — all or nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::partitions::day_of;
use super::{CHANNEL, Store, db_err};
use crate::error::TasksError;

/// One task to insert, placed already.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub id: Uuid,
    pub segment: u32,
    pub due_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    /// `None`: the queue's retry policy decides.
    pub max_attempts: Option<u32>,
    pub dedupe_key: Option<String>,
}

/// Largest NOTIFY payload PostgreSQL takes is 8000 bytes; stay well below.
const MAX_NOTIFY: usize = 7000;

/// The notifications for `rows` due before `horizon`: `queue|segment:due_ms,...`, the earliest
/// due per segment, split to fit.
pub fn notifications(queue: &str, rows: &[NewRow], horizon: DateTime<Utc>) -> Vec<String> {
    let mut earliest: BTreeMap<u32, i64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.due_at < horizon) {
        let ms = r.due_at.timestamp_millis();
        earliest
            .entry(r.segment)
            .and_modify(|e| *e = (*e).min(ms))
            .or_insert(ms);
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    for (seg, ms) in earliest {
        let item = format!("{seg}:{ms}");
        if !cur.is_empty() && cur.len() + item.len() + 1 > MAX_NOTIFY {
            out.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur = format!("{queue}|{item}");
        } else {
            cur.push(',');
            cur.push_str(&item);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A notification: the queue, and each segment's earliest due time.
pub type Announced = (String, Vec<(u32, DateTime<Utc>)>);

/// Parses a notification.
pub fn parse_notification(payload: &str) -> Option<Announced> {
    let (queue, items) = payload.split_once('|')?;
    let mut dues = Vec::new();
    for item in items.split(',') {
        let (seg, ms) = item.split_once(':')?;
        let due = DateTime::<Utc>::from_timestamp_millis(ms.parse().ok()?)?;
        dues.push((seg.parse().ok()?, due));
    }
    Some((queue.to_owned(), dues))
}

const INSERT: &str = "
WITH d AS (
    INSERT INTO task_dedupe (queue, dedupe_key, task)
    SELECT $1, u.k, u.t FROM unnest($7::text[], $2::uuid[]) AS u(k, t) WHERE u.k IS NOT NULL
    ON CONFLICT DO NOTHING RETURNING task
), ins AS (
    INSERT INTO tasks (id, queue, segment, due_at, payload, status, max_attempts, dedupe_key)
    SELECT u.id, $1, u.seg, u.due, u.payload, 'pending', u.max, u.k
      FROM unnest($2::uuid[], $3::int4[], $4::timestamptz[], $5::jsonb[], $6::int4[], $7::text[])
        AS u(id, seg, due, payload, max, k)
     WHERE u.k IS NULL OR u.id IN (SELECT task FROM d)
    RETURNING id
)
SELECT coalesce((SELECT array_agg(id) FROM ins), '{}'::uuid[]),
       (SELECT count(*) FROM (SELECT pg_notify($8, p) FROM unnest($9::text[]) AS p) AS n)";

impl Store {
    /// Inserts `rows` of `queue` on `server`. Returns, per row, the id it has in the store:
    /// its own, or for a dedupe key already used, the existing task's.
    pub async fn insert(
        &self,
        server: usize,
        queue: &str,
        rows: &[NewRow],
        notify_horizon: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, bool)>, TasksError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_days(server, "tasks", rows.iter().map(|r| day_of(r.due_at)))
            .await?;
        let client = self.conn(server, "submitting").await?;
        let err = db_err("submitting", server);
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let segs: Vec<i32> = rows.iter().map(|r| r.segment as i32).collect();
        let dues: Vec<DateTime<Utc>> = rows.iter().map(|r| r.due_at).collect();
        let payloads: Vec<&serde_json::Value> = rows.iter().map(|r| &r.payload).collect();
        let maxes: Vec<Option<i32>> = rows
            .iter()
            .map(|r| r.max_attempts.map(|m| m.min(i32::MAX as u32) as i32))
            .collect();
        let keys: Vec<Option<&str>> = rows.iter().map(|r| r.dedupe_key.as_deref()).collect();
        let notes = notifications(queue, rows, notify_horizon);
        let stmt = client.prepare_cached(INSERT).await.map_err(&err)?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &queue, &ids, &segs, &dues, &payloads, &maxes, &keys, &CHANNEL, &notes,
                ],
            )
            .await
            .map_err(&err)?;
        let inserted: Vec<Uuid> = row.get(0);
        let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
        let dup_keys: Vec<&str> = rows
            .iter()
            .filter(|r| !inserted.contains(&r.id))
            .filter_map(|r| r.dedupe_key.as_deref())
            .collect();
        let mut existing: BTreeMap<String, Uuid> = BTreeMap::new();
        if !dup_keys.is_empty() {
            for r in client
                .query(
                    "SELECT dedupe_key, task FROM task_dedupe WHERE queue = $1 AND dedupe_key = ANY($2)",
                    &[&queue, &dup_keys],
                )
                .await
                .map_err(&err)?
            {
                existing.insert(r.get(0), r.get(1));
            }
        }
        Ok(rows
            .iter()
            .map(|r| {
                if inserted.contains(&r.id) {
                    (r.id, false)
                } else {
                    let id = r
                        .dedupe_key
                        .as_ref()
                        .and_then(|k| existing.get(k))
                        .copied()
                        .unwrap_or(r.id);
                    (id, true)
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(segment: u32, due_ms: i64) -> NewRow {
        NewRow {
            id: Uuid::now_v7(),
            segment,
            due_at: DateTime::<Utc>::from_timestamp_millis(due_ms).unwrap(),
            payload: serde_json::Value::Null,
            max_attempts: None,
            dedupe_key: None,
        }
    }

    #[test]
    fn notifications_carry_each_segments_earliest_due_and_round_trip() {
        let horizon = DateTime::<Utc>::from_timestamp_millis(10_000).unwrap();
        let rows = [row(3, 5_000), row(3, 4_000), row(1, 9_000), row(2, 20_000)];
        let notes = notifications("q", &rows, horizon);
        assert_eq!(notes, ["q|1:9000,3:4000"], "segment 2 is past the horizon");
        let (queue, dues) = parse_notification(&notes[0]).unwrap();
        assert_eq!(queue, "q");
        assert_eq!(
            dues[1],
            (3, DateTime::<Utc>::from_timestamp_millis(4_000).unwrap())
        );
        assert!(parse_notification("garbage").is_none());
        assert!(parse_notification("q|x:1").is_none());
    }

    #[test]
    fn many_segments_split_into_payloads_postgres_accepts() {
        let horizon = crate::store::far_future();
        let rows: Vec<NewRow> = (0..5000).map(|s| row(s, 1_764_000_000_000)).collect();
        let notes = notifications("queue", &rows, horizon);
        assert!(notes.len() > 1);
        assert!(notes.iter().all(|n| n.len() <= MAX_NOTIFY));
        let total: usize = notes
            .iter()
            .map(|n| parse_notification(n).unwrap().1.len())
            .sum();
        assert_eq!(total, 5000);
    }
}
