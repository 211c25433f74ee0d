//! Human units in the manifest: durations ("250ms", "2s") and sizes ("16MiB").

use std::time::Duration;

/// Parse a duration such as `"250ms"`, `"2s"`, `"1m 30s"`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (e.g. \"250ms\", \"2s\"): {e}"))
}

/// Parse a byte size such as `"16MiB"`, `"512KiB"`, `"1GiB"` or a plain number of bytes.
pub fn bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size (e.g. \"16MiB\", \"512KiB\")");
    let n: usize = num.parse().map_err(|_| bad())?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_units_and_reject_garbage() {
        assert_eq!(bytes("16MiB"), Ok(16 << 20));
        assert_eq!(bytes("512KiB"), Ok(512 << 10));
        assert_eq!(bytes("100"), Ok(100));
        assert!(bytes("lots").is_err());
        assert!(bytes("16 furlongs").is_err());
    }

    #[test]
    fn durations_use_human_units() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert!(duration("soon").is_err());
    }
}
