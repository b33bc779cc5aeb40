//! Human-readable durations in JSON (`"30s"`, `"1500ms"`, `"5m"`, `"2h"`), so that configs
//! read well in `etcdctl get` and are easy to write by hand.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration; write e.g. 500ms, 30s, 5m or 2h")]
pub struct BadDuration(pub String);

impl FromStr for HumanDuration {
    type Err = BadDuration;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadDuration(s.to_owned());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => None,
        }
        .ok_or_else(bad)?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            _ if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            _ if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_in_the_largest_whole_unit() {
        let table = [
            ("500ms", 500, "500ms"),
            ("1500ms", 1500, "1500ms"),
            ("30s", 30_000, "30s"),
            ("120s", 120_000, "2m"),
            ("5m", 300_000, "5m"),
            ("2h", 7_200_000, "2h"),
            (" 7s ", 7_000, "7s"),
        ];
        for (input, ms, shown) in table {
            let d: HumanDuration = input.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "{input}");
            assert_eq!(d.to_string(), shown);
        }
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        for bad in ["", "s", "10", "10d", "-5s", "1.5s", "99999999999999999999h"] {
            let err = bad.parse::<HumanDuration>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
