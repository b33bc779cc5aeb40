//! Day partitions of `tasks` (by `due_at`) and `attempts` (by `started_at`): created ahead of
//! need, and dropped once older than the retention — dropping a partition frees its space at
//! once, where deleting a million finished rows leaves a million dead ones for vacuum.

use chrono::{DateTime, Days, NaiveDate, Utc};

use super::{Store, db_err};
use crate::error::TasksError;

/// The partitioned tables.
pub const TABLES: [&str; 3] = ["tasks", "attempts", "executions"];

/// The day of `t` (UTC).
pub fn day_of(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
}

/// The partition of `table` for `day`: `tasks_p20261201`.
pub fn name(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

/// The day a partition of `table` holds, from its name.
pub fn parse(table: &str, partition: &str) -> Option<NaiveDate> {
    let digits = partition.strip_prefix(table)?.strip_prefix("_p")?;
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

fn create_sql(table: &str, day: NaiveDate) -> Option<String> {
    let next = day.checked_add_days(Days::new(1))?;
    Some(format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
        name(table, day)
    ))
}

impl Store {
    /// Makes sure `table` has a partition for each of `days` on `server`. A partition that
    /// cannot be created (a race with another agent is fine; anything else is logged) leaves
    /// its rows in the default partition: nothing is lost, retention just cannot drop them.
    pub async fn ensure_days(
        &self,
        server: usize,
        table: &'static str,
        days: impl IntoIterator<Item = NaiveDate>,
    ) -> Result<(), TasksError> {
        let missing: Vec<NaiveDate> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            let mut d: Vec<NaiveDate> = days
                .into_iter()
                .filter(|d| !known.contains(&(server, table, *d)))
                .collect();
            d.sort();
            d.dedup();
            d
        };
        if missing.is_empty() {
            return Ok(());
        }
        let client = self.conn(server, "creating partitions").await?;
        for day in missing {
            let Some(sql) = create_sql(table, day) else {
                continue;
            };
            match client.batch_execute(&sql).await {
                Ok(()) => {}
                // Another agent created it at the same moment.
                Err(e)
                    if e.code()
                        .is_some_and(|c| matches!(c.code(), "42P07" | "23505")) => {}
                Err(e) => {
                    tracing::warn!(server, table, %day, error = %crate::error::pg_text(&e),
                        "a day partition could not be created; its rows go to the default partition");
                }
            }
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((server, table, day));
        }
        Ok(())
    }

    /// Retention on `server`: partitions for the next `ahead` days; task partitions older than
    /// `retention_days` with no pending or running task left, and attempt partitions older
    /// than that, dropped; old dedupe keys deleted. Returns the partitions dropped.
    pub async fn maintain(
        &self,
        server: usize,
        now: DateTime<Utc>,
        retention_days: u64,
        ahead: u64,
    ) -> Result<Vec<String>, TasksError> {
        let today = day_of(now);
        for table in TABLES {
            let days = (0..=ahead).filter_map(|n| today.checked_add_days(Days::new(n)));
            self.ensure_days(server, table, days).await?;
        }
        let Some(oldest_kept) = today.checked_sub_days(Days::new(retention_days)) else {
            return Ok(Vec::new());
        };
        let client = self.conn(server, "retention").await?;
        let err = db_err("retention", server);
        let rows = client
            .query(
                "SELECT c.relname, p.relname FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   JOIN pg_class p ON p.oid = i.inhparent
                  WHERE p.relname = ANY($1)",
                &[&TABLES.to_vec()],
            )
            .await
            .map_err(&err)?;
        let mut dropped = Vec::new();
        for row in rows {
            let (partition, table): (String, String) = (row.get(0), row.get(1));
            let Some(day) = parse(&table, &partition).filter(|d| *d < oldest_kept) else {
                continue;
            };
            if table == "tasks" {
                let busy: bool = client
                    .query_one(
                        &format!(
                            "SELECT EXISTS (SELECT 1 FROM {partition} WHERE status IN ('pending','running'))"
                        ),
                        &[],
                    )
                    .await
                    .map_err(&err)?
                    .get(0);
                if busy {
                    tracing::warn!(
                        server,
                        partition,
                        "not dropping: it still holds unfinished tasks"
                    );
                    continue;
                }
            }
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {partition}"))
                .await
                .map_err(&err)?;
            tracing::info!(server, partition, %day, "dropped a partition past retention");
            dropped.push(partition);
        }
        let cutoff = now - chrono::Duration::days(retention_days as i64);
        client
            .execute("DELETE FROM task_dedupe WHERE created_at < $1", &[&cutoff])
            .await
            .map_err(&err)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|(s, _, d)| *s != server || *d >= oldest_kept);
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bounds_of_a_day() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        assert_eq!(name("tasks", d), "tasks_p20261231");
        assert_eq!(parse("tasks", "tasks_p20261231"), Some(d));
        assert_eq!(parse("tasks", "tasks_default"), None);
        assert_eq!(parse("tasks", "attempts_p20261231"), None);
        let sql = create_sql("attempts", d).unwrap();
        assert!(
            sql.contains("FROM ('2026-12-31 00:00:00+00') TO ('2027-01-01 00:00:00+00')"),
            "{sql}"
        );
    }
}
