//! `bench-tasks`: delayed tasks at volume, shardjob beside graphile_worker on one PostgreSQL.
//!
//! Where to start: [`Line`] is one summary line; [`shardjob`] drives `tasks_agent` processes
//! through the cases (submit, steady, burst, kill) and measures them from the store's own
//! tables; `graphile` (feature `graphile`) runs the same workload through graphile_worker.

pub mod shardjob;

#[cfg(feature = "graphile")]
pub mod graphile;

/// One summary line: `bench=tasks impl=.. case=.. pending=.. rate=.. p50_ms=.. ...`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Line {
    pub implementation: &'static str,
    pub case: String,
    pub pending: u64,
    /// Tasks due per second (submitted per second for `submit`).
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub completed_per_s: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub rss_mib: f64,
}

impl Line {
    /// The line as printed.
    pub fn render(&self) -> String {
        format!(
            "bench=tasks impl={} case={} pending={} rate={:.0} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} completed_per_s={:.0} lost={} duplicates={} rss_mib={:.1}",
            self.implementation,
            self.case,
            self.pending,
            self.rate,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.completed_per_s,
            self.lost,
            self.duplicates,
            self.rss_mib
        )
    }
}

/// The resident memory of process `pid`, in MiB (0 when unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_every_key_in_order() {
        let l = Line {
            implementation: "shardjob",
            case: "steady".into(),
            pending: 1_000_000,
            rate: 5000.0,
            ..Line::default()
        };
        assert_eq!(
            l.render(),
            "bench=tasks impl=shardjob case=steady pending=1000000 rate=5000 p50_ms=0.0 p99_ms=0.0 max_ms=0.0 completed_per_s=0 lost=0 duplicates=0 rss_mib=0.0"
        );
        assert!(rss_mib(std::process::id()) > 0.0);
    }
}
