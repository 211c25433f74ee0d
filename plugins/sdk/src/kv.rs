//! Shared key-value state, namespaced per stage.
//!
//! Every instance of a stage in one proxy sees the same keys, so counters
//! and windows are exact there; with `[kv] backend = "redis"` every proxy
//! of a fleet sharing that Redis sees them too. Two stages never see each
//! other's keys.
//!
//! ```no_run
//! use std::time::Duration;
//! use portier_sdk::kv;
//!
//! // A fixed one-minute window per client.
//! let hits = kv::increment("hits:10.0.0.7", 1, Some(Duration::from_secs(60)))?;
//! # Ok::<(), kv::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

use crate::wit::kv as host;

/// A failure of the store itself (unreachable, timed out…), never "key absent".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// The host's description of the failure.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kv: {}", self.message)
    }
}

impl std::error::Error for Error {}

fn err(message: String) -> Error {
    Error { message }
}

/// Whole milliseconds, rounded up so a short non-zero TTL never becomes 0.
fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| {
        let ms = d.as_nanos().div_ceil(1_000_000);
        u64::try_from(ms).unwrap_or(u64::MAX)
    })
}

/// The value of a key, if present and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    host::get(key).map_err(err)
}

/// Store a value; a `ttl` of `None` keeps it until deleted.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
    host::set(key, value, ttl_ms(ttl)).map_err(err)
}

/// Delete a key; true when it existed.
pub fn delete(key: &str) -> Result<bool, Error> {
    host::delete(key).map_err(err)
}

/// Atomically add `delta` to an integer counter and return the new value.
///
/// A missing key starts at 0 and gets `ttl`; an existing key keeps its expiry.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Error> {
    host::increment(key, delta, ttl_ms(ttl)).map_err(err)
}

/// Atomically replace the value when it equals `expected` (`None`: the key
/// must be absent); true when the swap happened.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<bool, Error> {
    host::compare_and_swap(key, expected, value, ttl_ms(ttl)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(None), None);
        assert_eq!(ttl_ms(Some(Duration::ZERO)), Some(0));
        assert_eq!(ttl_ms(Some(Duration::from_micros(1))), Some(1));
        assert_eq!(ttl_ms(Some(Duration::from_millis(1500))), Some(1500));
        assert_eq!(ttl_ms(Some(Duration::MAX)), Some(u64::MAX));
    }
}
