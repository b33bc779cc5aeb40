//! `bench-lateness`: how late fires start when one process schedules N jobs each firing every
//! second, for shardjob and for tokio-cron-scheduler.
//!
//! Where to start: [`Recorder`] is what every implementation's job calls at its start: it keeps
//! the lateness (start − scheduled instant) of every fire inside a measured window and which
//! (job, second) fired, so [`Recorder::summary`] can count missed fires. [`shardjob`] and
//! [`tcs`] each run one implementation through [`measure`], which times the window's CPU and
//! reads the process's peak memory.

pub mod shardjob;
pub mod tcs;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};

/// Lateness and coverage of fires scheduled at whole seconds in `[start, start + secs)`.
#[derive(Debug)]
pub struct Recorder {
    jobs: usize,
    start: i64,
    secs: u32,
    /// One bit per (second, job): did it start.
    seen: Vec<AtomicU64>,
    /// Lateness in microseconds of every first start inside the window.
    /// (u32: the recorder's own memory is part of the measured RSS.)
    lateness_us: Mutex<Vec<u32>>,
    duplicates: AtomicU64,
    early: AtomicU64,
}

/// What a [`Recorder`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub expected: u64,
    pub runs: u64,
    pub missed: u64,
    pub duplicates: u64,
    /// Fires that started before their scheduled instant (a scheduler bug; counted as 0 late).
    pub early: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Recorder {
    /// A window of `secs` whole seconds from `start` (a Unix second) over jobs `0..jobs`.
    pub fn new(jobs: usize, start: i64, secs: u32) -> Self {
        let bits = jobs * secs as usize;
        Self {
            jobs,
            start,
            secs,
            seen: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            lateness_us: Mutex::new(Vec::with_capacity(bits)),
            duplicates: AtomicU64::new(0),
            early: AtomicU64::new(0),
        }
    }

    /// The first scheduled second of the window.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// The end of the window (exclusive), as a Unix second.
    pub fn end(&self) -> i64 {
        self.start + i64::from(self.secs)
    }

    /// Job `job`'s fire scheduled at `scheduled` started at `started`. Fires outside the window
    /// or of unknown jobs are ignored; a second start of the same fire counts as a duplicate.
    pub fn record(&self, job: usize, scheduled: DateTime<Utc>, started: DateTime<Utc>) {
        let sec = scheduled.timestamp();
        if job >= self.jobs || sec < self.start || sec >= self.end() {
            return;
        }
        let bit = (sec - self.start) as usize * self.jobs + job;
        let mask = 1u64 << (bit % 64);
        if self.seen[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let late = (started - scheduled).num_microseconds().unwrap_or(i64::MAX);
        let late = if late < 0 {
            self.early.fetch_add(1, Ordering::Relaxed);
            0
        } else {
            u32::try_from(late).unwrap_or(u32::MAX)
        };
        if let Ok(mut v) = self.lateness_us.lock() {
            v.push(late);
        }
    }

    /// Percentiles in milliseconds and the fires that never started.
    pub fn summary(&self) -> Summary {
        // Sorted where they are, in microseconds: a copy as f64 per percentile was 1.6 MB at
        // 10k jobs, the largest allocation of the run, counted in the agent's measured RSS.
        let mut us = self.lateness_us.lock().unwrap_or_else(|e| e.into_inner());
        us.sort_unstable();
        let ms = |p: f64| nearest_rank(&us, p).map_or(0.0, |v| f64::from(v) / 1000.0);
        let expected = (self.jobs * self.secs as usize) as u64;
        let runs = us.len() as u64;
        Summary {
            expected,
            runs,
            missed: expected.saturating_sub(runs),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            early: self.early.load(Ordering::Relaxed),
            p50_ms: ms(50.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
        }
    }
}

/// The `p`-th percentile (0..=100) of `sorted` by nearest rank, as `benchkit::percentile`.
fn nearest_rank(sorted: &[u32], p: f64) -> Option<u32> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()).checked_sub(1)?).copied()
}

/// User + system CPU seconds this process has used so far (0 where unavailable).
pub fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// What one implementation's window measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub summary: Summary,
    /// CPU seconds used during the window.
    pub cpu_s: f64,
    /// Peak RSS so far, read before the implementation is torn down.
    pub rss_mib: f64,
}

/// The measurement every implementation shares: opens a window of `secs` whole seconds starting
/// at least `lead` from now on `recorder` (the jobs record once it is set), times the window's
/// CPU, waits 2 s for late fires of its last second (later ones count as missed) and reads the
/// peak RSS, all before the caller tears anything down.
pub async fn measure(
    recorder: &OnceLock<Recorder>,
    n: usize,
    secs: u32,
    lead: std::time::Duration,
) -> Result<Measured, String> {
    let window = Recorder::new(n, window_start(lead), secs);
    let (start, end) = (window.start(), window.end());
    recorder
        .set(window)
        .map_err(|_| "the recorder was already set".to_owned())?;
    sleep_until_unix(start).await;
    let before = cpu_seconds();
    sleep_until_unix(end).await;
    let cpu_s = cpu_seconds() - before;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let summary = recorder.get().map(Recorder::summary).ok_or("no recorder")?;
    Ok(Measured {
        summary,
        cpu_s,
        rss_mib: peak_rss_mib(),
    })
}

/// Sleeps until the wall clock reaches the Unix second `sec`.
async fn sleep_until_unix(sec: i64) {
    let ms = sec * 1000 - Utc::now().timestamp_millis();
    if let Ok(ms) = u64::try_from(ms) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// Peak resident set size of this process in MiB (`VmHWM`), 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// How the N jobs' fires fall within each second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fires {
    /// All at the whole second: the burst every cron `* * * * * *` makes.
    Aligned,
    /// Job i at i/N of the second (shardjob's interval `offset`).
    Spread,
}

impl Fires {
    fn as_str(self) -> &'static str {
        match self {
            Self::Aligned => "aligned",
            Self::Spread => "spread",
        }
    }
}

/// The summary line of one implementation's run.
pub fn line(implementation: &str, fires: Fires, n: usize, m: &Measured) -> String {
    let (s, cpu_s, rss_mib) = (&m.summary, m.cpu_s, m.rss_mib);
    format!(
        "bench=lateness impl={implementation} fires={} n={n} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} missed={} duplicates={} early={} cpu_s={cpu_s:.2} rss_mib={rss_mib:.1}",
        fires.as_str(),
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        s.missed,
        s.duplicates,
        s.early
    )
}

/// The first whole second at least `lead` from now: where a measured window starts.
pub fn window_start(lead: std::time::Duration) -> i64 {
    let at = Utc::now() + chrono::Duration::from_std(lead).unwrap_or_default();
    at.timestamp() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sec: i64, ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(sec * 1000 + ms).unwrap()
    }

    #[test]
    fn counts_misses_duplicates_and_ignores_outside_fires() {
        let r = Recorder::new(3, 100, 2); // jobs 0..3, seconds 100 and 101
        r.record(0, at(100, 0), at(100, 1));
        r.record(1, at(100, 0), at(100, 3));
        r.record(1, at(100, 0), at(100, 9)); // same fire again
        r.record(2, at(101, 0), at(101, 2));
        r.record(0, at(102, 0), at(102, 500)); // after the window
        r.record(0, at(99, 0), at(99, 500)); // before it
        r.record(7, at(100, 0), at(100, 500)); // unknown job
        let s = r.summary();
        assert_eq!(s.expected, 6);
        assert_eq!(s.runs, 3);
        assert_eq!(s.missed, 3, "job 2 at 100, jobs 0 and 1 at 101");
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.max_ms, 3.0);
        assert_eq!(s.p50_ms, 2.0);
    }

    #[test]
    fn an_early_start_is_counted_and_not_late() {
        let r = Recorder::new(1, 100, 1);
        r.record(0, at(100, 0), at(99, 999));
        assert_eq!(r.summary().max_ms, 0.0);
        assert_eq!(r.summary().missed, 0);
        assert_eq!(r.summary().early, 1);
    }

    #[test]
    fn percentiles_of_the_sorted_microseconds_match_the_shared_helper() {
        let us: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 1013).collect();
        let mut sorted = us.clone();
        sorted.sort_unstable();
        let ms: Vec<f64> = us.iter().map(|&u| f64::from(u)).collect();
        for p in [1.0, 50.0, 99.0, 99.9, 100.0] {
            let ours = nearest_rank(&sorted, p).map(f64::from);
            assert_eq!(ours, Some(crate::benchkit::percentile(&ms, p)), "p{p}");
        }
        assert_eq!(nearest_rank(&[], 99.0), None);
    }
}
