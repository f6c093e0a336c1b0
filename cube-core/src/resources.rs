//! Resource quantities: byte sizes, CPU cores and the resources a task or node has.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes.
///
/// On the wire it is a plain number of bytes. Task files may also write a string with a
/// binary or decimal unit, such as `"64MiB"`, `"1.5GiB"` or `"500MB"`; a negative, fractional
/// or non-numeric value is rejected with a message that shows the accepted forms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// One kibibyte (1024 bytes).
    pub const KIB: u64 = 1024;
    /// One mebibyte.
    pub const MIB: u64 = 1024 * 1024;
    /// One gibibyte.
    pub const GIB: u64 = 1024 * 1024 * 1024;

    /// Creates a size of `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * Self::MIB)
    }

    /// Creates a size of `n` gibibytes.
    pub const fn gib(n: u64) -> Self {
        Self(n * Self::GIB)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses a size such as `"64MiB"`, `"2G"`, `"512kB"` or `"1048576"`.
    ///
    /// # Errors
    ///
    /// Returns a message naming the accepted forms when the text is not a non-negative
    /// number followed by an optional known unit, or when the result exceeds `u64`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(format!("size '{text}' is negative; {SIZE_FORMS}"));
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim();
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => Self::KIB,
            "m" | "mb" => 1_000_000,
            "mib" => Self::MIB,
            "g" | "gb" => 1_000_000_000,
            "gib" => Self::GIB,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => Self::GIB * 1024,
            _ => {
                return Err(format!(
                    "unknown size unit '{unit}' in '{text}'; {SIZE_FORMS}"
                ));
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid size '{text}'; {SIZE_FORMS}"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("size '{text}' is larger than {} bytes", u64::MAX));
        }
        if bytes.fract() != 0.0 {
            return Err(format!("size '{text}' is not a whole number of bytes"));
        }
        Ok(Self(bytes as u64))
    }
}

const SIZE_FORMS: &str =
    "expected a whole number of bytes or a string such as \"64MiB\", \"1.5GiB\" or \"500MB\"";

impl fmt::Display for ByteSize {
    /// Formats the size with the largest binary unit that keeps one decimal, e.g. `64.0MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0 as f64;
        let (value, unit) = if self.0 >= Self::GIB {
            (bytes / Self::GIB as f64, "GiB")
        } else if self.0 >= Self::MIB {
            (bytes / Self::MIB as f64, "MiB")
        } else if self.0 >= Self::KIB {
            (bytes / Self::KIB as f64, "KiB")
        } else {
            return write!(f, "{}B", self.0);
        };
        write!(f, "{value:.1}{unit}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number of bytes or a size such as \"64MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("size {v} is negative; {SIZE_FORMS}")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("size {v} is larger than {} bytes", u64::MAX)))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<ByteSize, E> {
        if v < 0 {
            return Err(E::custom(format!("size {v} is negative; {SIZE_FORMS}")));
        }
        self.visit_u128(v as u128)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
        if v < 0.0 {
            return Err(E::custom(format!("size {v} is negative; {SIZE_FORMS}")));
        }
        if !v.is_finite() || v >= u64::MAX as f64 {
            return Err(E::custom(format!(
                "size {v} is larger than {} bytes",
                u64::MAX
            )));
        }
        if v.fract() != 0.0 {
            return Err(E::custom(format!(
                "size {v} is not a whole number of bytes"
            )));
        }
        Ok(ByteSize(v as u64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        ByteSize::parse(v).map_err(E::custom)
    }
}

/// The resources a task requests or a node offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in cores; fractional values such as 0.5 are allowed.
    pub cpu: f64,
    /// Memory in bytes.
    pub memory: ByteSize,
    /// Disk in bytes.
    pub disk: ByteSize,
}

impl Resources {
    /// Adds `other` to these resources, saturating at the type's limits.
    pub fn add(&mut self, other: &Resources) {
        self.cpu += other.cpu;
        self.memory = ByteSize(self.memory.0.saturating_add(other.memory.0));
        self.disk = ByteSize(self.disk.0.saturating_add(other.disk.0));
    }

    /// Subtracts `other`, clamping each resource at zero so accounting never goes negative.
    pub fn subtract(&mut self, other: &Resources) {
        self.cpu = (self.cpu - other.cpu).max(0.0);
        // Repeated float additions and subtractions leave dust; treat it as zero.
        if self.cpu < 1e-9 {
            self.cpu = 0.0;
        }
        self.memory = ByteSize(self.memory.0.saturating_sub(other.memory.0));
        self.disk = ByteSize(self.disk.0.saturating_sub(other.disk.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_size_parses_units() {
        let cases = [
            ("1024", 1024),
            ("64MiB", 64 * ByteSize::MIB),
            ("64 MiB", 64 * ByteSize::MIB),
            ("1.5GiB", 3 * ByteSize::GIB / 2),
            ("500MB", 500_000_000),
            ("2k", 2_000),
            ("8b", 8),
        ];
        for (text, bytes) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn byte_size_rejects_bad_text() {
        for text in ["", "-1", "MiB", "12XB", "0.5", "99999999999TiB", "1.2.3"] {
            assert!(
                ByteSize::parse(text).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn byte_size_deserializes_numbers_and_strings() {
        let from_number: ByteSize = serde_json::from_str("67108864").unwrap();
        let from_string: ByteSize = serde_json::from_str("\"64MiB\"").unwrap();
        assert_eq!(from_number, ByteSize::mib(64));
        assert_eq!(from_string, ByteSize::mib(64));
    }

    #[test]
    fn byte_size_rejects_negative_and_huge_numbers() {
        let negative = serde_json::from_str::<ByteSize>("-1").unwrap_err();
        assert!(negative.to_string().contains("negative"), "{negative}");
        let huge = serde_json::from_str::<ByteSize>("18446744073709551616").unwrap_err();
        assert!(huge.to_string().contains("larger than"), "{huge}");
    }

    #[test]
    fn byte_size_displays_binary_units() {
        assert_eq!(ByteSize::mib(64).to_string(), "64.0MiB");
        assert_eq!(ByteSize(512).to_string(), "512B");
        assert_eq!(ByteSize::gib(2).to_string(), "2.0GiB");
    }

    #[test]
    fn resources_subtract_clamps_at_zero() {
        let mut allocated = Resources {
            cpu: 0.5,
            memory: ByteSize::mib(100),
            disk: ByteSize(0),
        };
        allocated.subtract(&Resources {
            cpu: 1.0,
            memory: ByteSize::mib(200),
            disk: ByteSize(5),
        });
        assert_eq!(allocated.cpu, 0.0);
        assert_eq!(allocated.memory, ByteSize(0));
        assert_eq!(allocated.disk, ByteSize(0));
    }
}
