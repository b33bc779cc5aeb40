//! Schedule math, pure: when does a job fire after a given instant, and which fire was the most
//! recent at or before one. Time is passed in, never read.
//!
//! - cron: evaluated in the job's IANA time zone (the `cron` crate; seconds field required);
//! - fixed interval: aligned to the Unix epoch plus the job's `offset` (every 30 s fires at :00
//!   and :30; with offset 10s at :10 and :40), so every agent computes the same fire times and a
//!   new owner agrees with the old one about which fire is which;
//! - one-shot: once at its instant;
//! - resident: never (its runs last as long as a shard is held).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use shardjob_coordinator::model::Schedule;

/// A schedule that cannot be compiled (validated configs always compile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression {expr:?}: {cause}")]
    Cron { expr: String, cause: String },
    #[error("time zone {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("interval must be at least 1 ms")]
    ZeroInterval,
    #[error("interval {0:?} is longer than 366 days")]
    TooLong(Duration),
}

/// A compiled schedule. Two are equal when they fire at the same instants (a cron expression
/// is compared as written, with its time zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireSchedule {
    Cron(Box<cron::Schedule>, Tz),
    /// Period and offset from the epoch (offset < period).
    Every(Duration, Duration),
    At(DateTime<Utc>),
    /// Never fires: the job's runs last as long as its shards are held.
    Resident,
}

impl FireSchedule {
    /// Compiles `schedule` for `time_zone`.
    pub fn new(schedule: &Schedule, time_zone: &str) -> Result<Self, ScheduleError> {
        match schedule {
            Schedule::Cron(expr) => {
                let tz = Tz::from_str(time_zone)
                    .map_err(|_| ScheduleError::TimeZone(time_zone.to_owned()))?;
                let parsed = cron::Schedule::from_str(expr).map_err(|e| ScheduleError::Cron {
                    expr: expr.clone(),
                    cause: e.to_string(),
                })?;
                Ok(Self::Cron(Box::new(parsed), tz))
            }
            Schedule::Every(d) if d.0.as_millis() == 0 => Err(ScheduleError::ZeroInterval),
            // Bounded, so interval arithmetic in i64 milliseconds cannot overflow.
            Schedule::Every(d) if d.0 > shardjob_coordinator::model::MAX_INTERVAL => {
                Err(ScheduleError::TooLong(d.0))
            }
            Schedule::Every(d) => Ok(Self::Every(d.0, Duration::ZERO)),
            Schedule::At(t) => Ok(Self::At(*t)),
            Schedule::Resident => Ok(Self::Resident),
        }
    }

    /// Shifts an interval schedule by `offset` from the epoch (taken modulo the period); other
    /// schedules are unchanged.
    pub fn with_offset(self, offset: Duration) -> Self {
        match self {
            Self::Every(period, _) => {
                let p = period.as_millis().max(1);
                let off = offset.as_millis() % p;
                Self::Every(period, Duration::from_millis(off as u64))
            }
            other => other,
        }
    }

    /// The first fire strictly after `t`, if any.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(s, tz) => s
                .after(&t.with_timezone(tz))
                .next()
                .map(|f| f.with_timezone(&Utc)),
            Self::Every(period, off) => slot_start(*period, *off, slot(*period, *off, t) + 1),
            Self::At(at) => (*at > t).then_some(*at),
            Self::Resident => None,
        }
    }

    /// The fire to schedule after `fired` ran (late) at `now`: the next one after `fired`, or,
    /// when that one is already past too (the agent fell a whole interval behind: a stall, an
    /// overload), the first one after `now`, with `true` for "fires in between were coalesced
    /// into this run". Replaying every missed fire instead would keep an overloaded agent
    /// behind for good.
    pub fn following(
        &self,
        fired: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, bool) {
        match self.next_after(fired) {
            Some(next) if next <= now => (self.next_after(now), true),
            next => (next, false),
        }
    }

    /// The most recent fire at or before `t`, if any.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron(s, tz) => {
                // Cron fires on whole seconds; "before t + 1 ms" is "at or before t".
                let just_after = t + chrono::Duration::milliseconds(1);
                s.after(&just_after.with_timezone(tz))
                    .next_back()
                    .map(|f| f.with_timezone(&Utc))
            }
            Self::Every(period, off) => slot_start(*period, *off, slot(*period, *off, t)),
            Self::At(at) => (*at <= t).then_some(*at),
            Self::Resident => None,
        }
    }
}

/// The index of the interval (of `period`, shifted by `offset` from the epoch) that holds `t`.
fn slot(period: Duration, offset: Duration, t: DateTime<Utc>) -> i64 {
    let ms = t.timestamp_millis() - offset.as_millis() as i64;
    ms.div_euclid((period.as_millis() as i64).max(1))
}

/// Where interval `k` starts, if representable.
fn slot_start(period: Duration, offset: Duration, k: i64) -> Option<DateTime<Utc>> {
    let ms = k
        .checked_mul(period.as_millis() as i64)?
        .checked_add(offset.as_millis() as i64)?;
    Utc.timestamp_millis_opt(ms).single()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardjob_coordinator::model::HumanDuration;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cron(expr: &str, tz: &str) -> FireSchedule {
        FireSchedule::new(&Schedule::Cron(expr.into()), tz).unwrap()
    }

    fn every(s: &str) -> FireSchedule {
        FireSchedule::new(&Schedule::Every(s.parse::<HumanDuration>().unwrap()), "UTC").unwrap()
    }

    #[test]
    fn an_interval_near_u64_max_is_refused_not_a_spin_or_an_overflow() {
        let huge = Schedule::Every(HumanDuration(Duration::from_millis(u64::MAX)));
        assert!(matches!(
            FireSchedule::new(&huge, "UTC"),
            Err(ScheduleError::TooLong(_))
        ));
        // The longest allowed, with the longest offset, still computes.
        let year = Schedule::Every(HumanDuration(shardjob_coordinator::model::MAX_INTERVAL));
        let s = FireSchedule::new(&year, "UTC")
            .unwrap()
            .with_offset(Duration::from_millis(u64::MAX));
        let at = t("2026-11-21T10:00:00Z");
        let next = s.next_after(at).unwrap();
        assert!(next > at && s.latest_at_or_before(next) == Some(next));
    }

    #[test]
    fn schedules_are_equal_when_they_fire_alike() {
        let interval = |tz: &str, offset: u64| {
            FireSchedule::new(&Schedule::Every(HumanDuration(Duration::from_secs(10))), tz)
                .unwrap()
                .with_offset(Duration::from_secs(offset))
        };
        // An interval's time zone changes nothing, nor does an offset of whole periods.
        assert_eq!(interval("UTC", 3), interval("Europe/Berlin", 13));
        assert_ne!(interval("UTC", 3), interval("UTC", 4));
        assert_ne!(every("10s"), every("20s"));
        // A cron expression fires in its time zone.
        assert_eq!(cron("0 * * * * *", "UTC"), cron("0 * * * * *", "UTC"));
        assert_ne!(
            cron("0 * * * * *", "UTC"),
            cron("0 * * * * *", "Asia/Kolkata")
        );
        assert_ne!(cron("0 * * * * *", "UTC"), cron("30 * * * * *", "UTC"));
    }

    #[test]
    fn cron_next_and_latest() {
        let s = cron("*/5 * * * * *", "UTC");
        let table = [
            (
                "2026-11-21T10:00:00Z",
                "2026-11-21T10:00:05Z",
                "2026-11-21T10:00:00Z",
            ),
            (
                "2026-11-21T10:00:03.5Z",
                "2026-11-21T10:00:05Z",
                "2026-11-21T10:00:00Z",
            ),
            (
                "2026-11-21T10:00:59Z",
                "2026-11-21T10:01:00Z",
                "2026-11-21T10:00:55Z",
            ),
        ];
        for (at, next, latest) in table {
            assert_eq!(s.next_after(t(at)), Some(t(next)), "next after {at}");
            assert_eq!(
                s.latest_at_or_before(t(at)),
                Some(t(latest)),
                "latest at {at}"
            );
        }
    }

    #[test]
    fn cron_follows_the_time_zone_across_dst() {
        // 09:30 in New York is 14:30 UTC in winter and 13:30 UTC in summer.
        let s = cron("0 30 9 * * *", "America/New_York");
        assert_eq!(
            s.next_after(t("2026-01-10T00:00:00Z")),
            Some(t("2026-01-10T14:30:00Z"))
        );
        assert_eq!(
            s.next_after(t("2026-07-10T00:00:00Z")),
            Some(t("2026-07-10T13:30:00Z"))
        );
    }

    #[test]
    fn a_fire_run_more_than_an_interval_late_skips_to_the_first_fire_after_now() {
        let s = every("1s");
        let fired = t("2026-11-21T10:00:00Z");
        // On time or less than an interval late: the next fire follows it.
        assert_eq!(
            s.following(fired, t("2026-11-21T10:00:00.900Z")),
            (Some(t("2026-11-21T10:00:01Z")), false)
        );
        // Exactly at the next fire: that one is due now, coalesced into this late run.
        assert_eq!(
            s.following(fired, t("2026-11-21T10:00:01Z")),
            (Some(t("2026-11-21T10:00:02Z")), true)
        );
        // 80 s behind: not 80 replays, the next fire after now.
        assert_eq!(
            s.following(fired, t("2026-11-21T10:01:20.300Z")),
            (Some(t("2026-11-21T10:01:21Z")), true)
        );
        let once = FireSchedule::new(&Schedule::At(fired), "UTC").unwrap();
        assert_eq!(
            once.following(fired, t("2026-11-21T10:05:00Z")),
            (None, false)
        );
    }

    #[test]
    fn an_offset_shifts_every_fire_of_an_interval() {
        let s = every("30s").with_offset(Duration::from_millis(10_250));
        let table = [
            // (at, next after, latest at or before)
            (
                "2026-11-21T10:00:00Z",
                "2026-11-21T10:00:10.250Z",
                "2026-11-21T09:59:40.250Z",
            ),
            (
                "2026-11-21T10:00:10.250Z",
                "2026-11-21T10:00:40.250Z",
                "2026-11-21T10:00:10.250Z",
            ),
            (
                "2026-11-21T10:00:39Z",
                "2026-11-21T10:00:40.250Z",
                "2026-11-21T10:00:10.250Z",
            ),
        ];
        for (at, next, latest) in table {
            assert_eq!(s.next_after(t(at)), Some(t(next)), "next after {at}");
            assert_eq!(
                s.latest_at_or_before(t(at)),
                Some(t(latest)),
                "latest at {at}"
            );
        }
        // Taken modulo the period; cron and one-shot schedules ignore it.
        let wrapped = every("30s").with_offset(Duration::from_secs(40));
        assert_eq!(
            wrapped.next_after(t("2026-11-21T10:00:00Z")),
            Some(t("2026-11-21T10:00:10Z"))
        );
        let c = cron("0 * * * * *", "UTC").with_offset(Duration::from_secs(5));
        assert_eq!(
            c.next_after(t("2026-11-21T10:00:00Z")),
            Some(t("2026-11-21T10:01:00Z"))
        );
    }

    #[test]
    fn intervals_are_epoch_aligned_so_every_agent_agrees() {
        let s = every("30s");
        assert_eq!(
            s.next_after(t("2026-11-21T10:00:00Z")),
            Some(t("2026-11-21T10:00:30Z"))
        );
        assert_eq!(
            s.next_after(t("2026-11-21T10:00:29.999Z")),
            Some(t("2026-11-21T10:00:30Z"))
        );
        assert_eq!(
            s.latest_at_or_before(t("2026-11-21T10:00:29.999Z")),
            Some(t("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(t("2026-11-21T10:00:30Z")),
            Some(t("2026-11-21T10:00:30Z"))
        );
        let ms = every("250ms");
        assert_eq!(
            ms.next_after(t("2026-11-21T10:00:00.100Z")),
            Some(t("2026-11-21T10:00:00.250Z"))
        );
    }

    #[test]
    fn one_shot_fires_once() {
        let s = FireSchedule::new(&Schedule::At(t("2026-12-01T09:00:00Z")), "UTC").unwrap();
        assert_eq!(
            s.next_after(t("2026-11-30T00:00:00Z")),
            Some(t("2026-12-01T09:00:00Z"))
        );
        assert_eq!(s.next_after(t("2026-12-01T09:00:00Z")), None);
        assert_eq!(s.latest_at_or_before(t("2026-11-30T00:00:00Z")), None);
        assert_eq!(
            s.latest_at_or_before(t("2026-12-02T00:00:00Z")),
            Some(t("2026-12-01T09:00:00Z"))
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            FireSchedule::new(&Schedule::Cron("nope".into()), "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            FireSchedule::new(&Schedule::Cron("* * * * * *".into()), "Nowhere/City"),
            Err(ScheduleError::TimeZone(_))
        ));
    }
}
