//! Durations as they appear in task files: a number with a unit, such as `"10s"` or `"500ms"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with its unit: `ms`, `s`, `m` or `h` (`"1m30s"` combines units).
///
/// A bare number is read as seconds. On output it is written as a string with the largest
/// units that represent it exactly, e.g. `"10s"` or `"1500ms"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    /// Creates a duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Creates a duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// The standard-library duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Parses text such as `"10s"`, `"250ms"`, `"2m"`, `"1h"`, `"1m30s"` or `"5"` (seconds).
    ///
    /// # Errors
    ///
    /// Returns a message naming the accepted forms when the text has no number, an unknown
    /// unit or a value that overflows.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("empty duration; {DURATION_FORMS}"));
        }
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Self::from_secs(secs));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("invalid duration '{text}'; {DURATION_FORMS}"));
            }
            let value: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("duration '{text}' is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "ms" => Duration::from_millis(value),
                "s" => Duration::from_secs(value),
                "m" => Duration::from_secs(value.saturating_mul(60)),
                "h" => Duration::from_secs(value.saturating_mul(3600)),
                unit => {
                    return Err(format!(
                        "unknown duration unit '{unit}' in '{text}'; {DURATION_FORMS}"
                    ));
                }
            };
            rest = &rest[unit_len..];
            total = total
                .checked_add(part)
                .ok_or_else(|| format!("duration '{text}' is too large"))?;
        }
        Ok(Self(total))
    }
}

const DURATION_FORMS: &str =
    "expected a number of seconds or a string such as \"10s\", \"500ms\", \"2m\" or \"1h\"";

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if !millis.is_multiple_of(1000) {
            write!(f, "{millis}ms")
        } else {
            write!(f, "{}s", millis / 1000)
        }
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of seconds or a duration such as \"10s\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationSpec, E> {
        Ok(DurationSpec::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationSpec, E> {
        u64::try_from(v)
            .map(DurationSpec::from_secs)
            .map_err(|_| E::custom(format!("duration {v} is negative; {DURATION_FORMS}")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationSpec, E> {
        if !(0.0..=1e12).contains(&v) {
            return Err(E::custom(format!(
                "duration {v} is out of range; {DURATION_FORMS}"
            )));
        }
        Ok(DurationSpec(Duration::from_secs_f64(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
        DurationSpec::parse(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_parses_units() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("250ms", Duration::from_millis(250)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("7", Duration::from_secs(7)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                DurationSpec::parse(text),
                Ok(DurationSpec(expected)),
                "{text}"
            );
        }
    }

    #[test]
    fn duration_rejects_bad_text() {
        for text in ["", "s", "10x", "-5s", "1.5s"] {
            assert!(
                DurationSpec::parse(text).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn duration_displays_round_trip() {
        for text in ["10s", "1500ms", "0s"] {
            assert_eq!(DurationSpec::parse(text).unwrap().to_string(), text);
        }
    }
}
