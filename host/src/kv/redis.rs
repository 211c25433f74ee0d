//! The Redis (or Valkey) kv backend: one state for a fleet of proxies.
//!
//! One multiplexed connection per process ([`ConnectionManager`]), which
//! reconnects by itself after an outage. Every command is bounded by the
//! configured `timeout`, so an unreachable server costs a request that long
//! at most, and the stage's `kv.outage` policy decides what then.
//!
//! Keys are the prefix, the stage name's length, the stage name and the
//! plugin's key (`portier:10:rate-limit:…`): stages cannot collide, and
//! several deployments share one server with different prefixes.
//! Increment with a TTL for a new key and compare-and-swap are Lua scripts,
//! atomic on the server, so counters are exact across the fleet.
//!
//! An outage is logged once when it starts and once when it ends; between
//! the two, failures are counted in `/metrics` only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};

use super::{KvError, Quota};
use crate::manifest::RedisSettings;

/// `INCRBY`, and a TTL when the key was new (an existing key keeps its own).
const INCREMENT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

/// `SET` when the value is the expected one (ARGV[1] = '0': must be absent).
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

/// A Redis server the process talks to.
pub struct Redis {
    settings: RedisSettings,
    connection: ConnectionManager,
    increment: Script,
    compare_and_swap: Script,
    /// Whether the server is failing now (the outage was logged).
    down: Arc<AtomicBool>,
}

impl Redis {
    /// A client for the server `settings` names; it connects on first use
    /// and again after every failure. `Err` says what is wrong with the URL.
    pub fn new(settings: RedisSettings) -> Result<Redis, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            // Reconnect quickly after an outage; each command fails fast
            // meanwhile instead of waiting for the retries.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(Redis {
            settings,
            connection,
            increment: Script::new(INCREMENT),
            compare_and_swap: Script::new(COMPARE_AND_SWAP),
            down: Arc::default(),
        })
    }

    /// What it was made from.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Stage `name`'s view, with `quota`'s key and value limits (Redis's
    /// own `maxmemory` bounds its size).
    pub fn namespace(self: &Arc<Self>, name: &str, quota: Quota) -> Namespace {
        Namespace {
            redis: self.clone(),
            prefix: format!("{}{}:{name}:", self.settings.prefix, name.len()),
            quota,
        }
    }

    /// The result of a command, with outages logged once and errors mapped.
    fn settle<T>(&self, result: Result<T, RedisError>) -> Result<T, KvError> {
        match result {
            Ok(v) => {
                if self.down.load(Relaxed) && self.down.swap(false, Relaxed) {
                    tracing::info!(url = %self.settings.redacted_url(), "kv backend reachable again");
                }
                Ok(v)
            }
            Err(e) if is_outage(&e) => {
                if !self.down.swap(true, Relaxed) {
                    tracing::warn!(url = %self.settings.redacted_url(), error = %e, "kv backend unreachable; each stage's kv.outage applies until it is back");
                }
                Err(KvError::Unavailable(e.to_string()))
            }
            Err(e)
                if e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
                    && e.to_string().contains("not an integer") =>
            {
                Err(KvError::NotAnInteger)
            }
            Err(e) if e.to_string().contains("overflow") => Err(KvError::Overflow),
            Err(e) => Err(KvError::Unavailable(e.to_string())),
        }
    }
}

/// Whether an error means the server is not there (rather than that it
/// refused one command).
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Milliseconds for a Lua script's TTL argument (0: none).
fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| (t.as_millis() as u64).max(1))
}

/// One stage's keys on the server.
#[derive(Clone)]
pub struct Namespace {
    redis: Arc<Redis>,
    prefix: String,
    quota: Quota,
}

impl Namespace {
    fn key(&self, key: &str) -> Result<String, KvError> {
        if key.len() > self.quota.max_key {
            return Err(KvError::KeyTooLong(self.quota.max_key));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.quota.max_value {
            return Err(KvError::ValueTooLarge(self.quota.max_value));
        }
        Ok(())
    }

    fn connection(&self) -> ConnectionManager {
        self.redis.connection.clone()
    }

    /// The live value of a key.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let k = self.key(key)?;
        let r = redis::cmd("GET")
            .arg(k)
            .query_async(&mut self.connection())
            .await;
        self.redis.settle(r)
    }

    /// Store a value with an optional time to live.
    pub async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        let k = self.key(key)?;
        self.check_value(&value)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(k).arg(value);
        if let Some(t) = ttl {
            cmd.arg("PX").arg(ttl_ms(Some(t)));
        }
        let r = cmd.query_async::<()>(&mut self.connection()).await;
        self.redis.settle(r)
    }

    /// Delete a key; true when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let k = self.key(key)?;
        let r = redis::cmd("DEL")
            .arg(k)
            .query_async::<u64>(&mut self.connection())
            .await;
        self.redis.settle(r).map(|n| n > 0)
    }

    /// Add `delta` to a decimal counter; a missing key starts at 0 with `ttl`.
    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        let k = self.key(key)?;
        let r = self
            .redis
            .increment
            .key(k)
            .arg(delta)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.connection())
            .await;
        self.redis.settle(r)
    }

    /// Replace the value when it equals `expected` (`None`: must be absent).
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let k = self.key(key)?;
        self.check_value(&value)?;
        let r = self
            .redis
            .compare_and_swap
            .key(k)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value)
            .arg(ttl_ms(ttl))
            .invoke_async::<i64>(&mut self.connection())
            .await;
        self.redis.settle(r).map(|n| n == 1)
    }
}
