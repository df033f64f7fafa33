//! Durations in manifests, written like Go's and kubectl's: "90s", "5m", "1h30m", "250ms".

use std::{borrow::Cow, fmt, str::FromStr, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(StdDuration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (examples: 250ms, 90s, 5m, 1h30m)")]
pub struct DurationError(String);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }
    pub fn as_std(&self) -> StdDuration {
        self.0
    }
    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Duration(d)
    }
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        if s.is_empty() {
            return Err(err());
        }
        let mut rest = s;
        let mut total = 0f64;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            let number: f64 = rest[..num_end].parse().map_err(|_| err())?;
            rest = &rest[num_end..];
            let (scale, unit_len) = if rest.starts_with("ms") {
                (0.001, 2)
            } else if rest.starts_with('s') {
                (1.0, 1)
            } else if rest.starts_with('m') {
                (60.0, 1)
            } else if rest.starts_with('h') {
                (3600.0, 1)
            } else {
                return Err(err());
            };
            total += number * scale;
            rest = &rest[unit_len..];
        }
        StdDuration::try_from_secs_f64(total)
            .map(Duration)
            .map_err(|_| err())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let s = self.0.as_secs();
        match (s / 3600, (s % 3600) / 60, s % 60) {
            (0, 0, sec) => write!(f, "{sec}s"),
            (0, m, 0) => write!(f, "{m}m"),
            (0, m, sec) => write!(f, "{m}m{sec}s"),
            (h, 0, 0) => write!(f, "{h}h"),
            (h, m, 0) => write!(f, "{h}h{m}m"),
            (h, m, sec) => write!(f, "{h}h{m}m{sec}s"),
        }
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({self})")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let secs = |s: &str| s.parse::<Duration>().map(|d| d.as_secs_f64());
        assert_eq!(secs("90s"), Ok(90.0));
        assert_eq!(secs("5m"), Ok(300.0));
        assert_eq!(secs("1h30m"), Ok(5400.0));
        assert_eq!(secs("250ms"), Ok(0.25));
        assert_eq!(secs("1.5s"), Ok(1.5));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "5", "5x", "m", "-5s", "5 s"] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["90s", "5m", "1h30m", "250ms", "2h", "1m30s"] {
            let d: Duration = s.parse().expect("valid");
            let shown = d.to_string();
            assert_eq!(shown.parse::<Duration>(), Ok(d), "{s} shown as {shown}");
        }
        assert_eq!(
            "90s".parse::<Duration>().map(|d| d.to_string()),
            Ok("1m30s".into())
        );
    }
}
