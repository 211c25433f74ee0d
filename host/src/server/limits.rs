//! How many client connections are open, in total and per IP address.
//!
//! Past `max_connections` the accept loops stop accepting, so new
//! connections wait in the kernel's listen backlog (as HAProxy's `maxconn`
//! does) instead of being refused; past `max_connections_per_ip` a new
//! connection from that address is closed at once. One tracker serves every
//! worker, so the limits hold for the process (give or take one connection
//! per worker accepting at the same moment).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The process's open client connections.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Signalled when a connection closes.
    freed: Notify,
}

/// One admitted connection; counted until dropped.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    ip: IpAddr,
    /// Whether it holds one of the `max_connections` slots too.
    counted: bool,
}

impl Connections {
    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Wait until fewer than `max` connections are open (to accept one more).
    pub async fn room_for(&self, max: usize) {
        loop {
            let mut freed = pin!(self.freed.notified());
            // Registered before the check, so a close in between is not missed.
            freed.as_mut().enable();
            if self.open.load(Relaxed) < max {
                return;
            }
            freed.await;
        }
    }

    /// Count a new connection from `ip`: `None` (close it) if that address
    /// already has `per_ip` open; otherwise wait, if need be, until it is
    /// one of at most `max` (another worker may have taken the last slot
    /// since this one accepted).
    pub async fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        per_ip: usize,
        max: usize,
    ) -> Option<Admitted> {
        {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= per_ip {
                return None;
            }
            *n += 1;
        }
        // From here the guard undoes the per-IP count if this future is dropped.
        let mut admitted = Admitted {
            connections: self.clone(),
            ip,
            counted: false,
        };
        loop {
            let mut freed = pin!(self.freed.notified());
            freed.as_mut().enable();
            let open = self.open.load(Relaxed);
            if open < max {
                if self
                    .open
                    .compare_exchange(open, open + 1, Relaxed, Relaxed)
                    .is_ok()
                {
                    admitted.counted = true;
                    let m = crate::metrics::get();
                    m.connections.inc();
                    m.connections_open.inc();
                    return Some(admitted);
                }
                continue;
            }
            freed.await;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        {
            let mut map = self
                .connections
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        if self.counted {
            crate::metrics::get().connections_open.dec();
            self.connections.open.fetch_sub(1, Relaxed);
            self.connections.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_ip_limit_counts_open_connections_of_each_address() {
        let c = Arc::new(Connections::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = c.admit(a, 2, 10).await.unwrap();
        let _second = c.admit(a, 2, 10).await.unwrap();
        assert!(
            c.admit(a, 2, 10).await.is_none(),
            "a third from the same address"
        );
        let _other = c.admit(b, 2, 10).await.unwrap();
        assert_eq!(c.open(), 3);
        drop(first);
        assert_eq!(c.open(), 2);
        assert!(
            c.admit(a, 2, 10).await.is_some(),
            "room again once one closed"
        );
    }

    #[tokio::test]
    async fn past_the_total_a_connection_waits_until_one_closes() {
        let c = Arc::new(Connections::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let held = c.admit(ip, 10, 1).await.unwrap();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.admit(ip, 10, 1).await.map(|_| ()) }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "admitted past the total");
        assert_eq!(c.open(), 1);
        drop(held);
        let admitted = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("admitted once one closed")
            .unwrap();
        assert!(admitted.is_some());
    }
}
