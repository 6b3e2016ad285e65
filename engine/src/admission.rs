//! [`Admission`]: the connection limits — `max_connections` in all and, optionally,
//! `max_connections_per_ip` — decided before the handshake, so a refused client gets HTTP 503 and
//! never a half-registered connection. Nothing here is sized by a fixed table: the per-address
//! counts live in a map that holds only addresses with open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits, shared by every accept.
#[derive(Debug)]
pub struct Admission {
    /// One permit per connection the engine may hold.
    total: Arc<Semaphore>,
    /// At most this many connections per client address; 0 for no limit.
    per_ip_limit: usize,
    /// Open connections per client address (only addresses with at least one).
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection's place within the limits; released when dropped.
#[derive(Debug)]
pub struct Admitted {
    /// Its share of `max_connections`.
    _permit: OwnedSemaphorePermit,
    /// Its share of its address's limit, if there is one.
    _per_ip: Option<PerIpSlot>,
}

/// One connection counted against its address.
#[derive(Debug)]
struct PerIpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was not admitted; the reason is sent with HTTP 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_connections` are open.
    #[error("server is at its connection limit")]
    Full,
    /// `max_connections_per_ip` are open from this address.
    #[error("too many connections from your address")]
    TooManyFromAddress,
}

impl Admission {
    /// Limits of `max_connections` in all and `per_ip_limit` per address (0: none).
    pub fn new(max_connections: usize, per_ip_limit: usize) -> Self {
        Admission { total: Arc::new(Semaphore::new(max_connections)), per_ip_limit, per_ip: Default::default() }
    }

    /// Admits one more connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let permit = self.total.clone().try_acquire_owned().map_err(|_| Refused::Full)?;
        let per_ip = match self.per_ip_limit {
            0 => None,
            limit => {
                let mut counts = self.per_ip.lock().unwrap_or_else(|poison| poison.into_inner());
                let count = counts.entry(ip).or_insert(0);
                // An address seen here for the first time starts at 0 < limit, so no entry is
                // left behind at 0 when one is refused.
                if *count >= limit {
                    return Err(Refused::TooManyFromAddress);
                }
                *count += 1;
                Some(PerIpSlot { ip, counts: self.per_ip.clone() })
            }
        };
        Ok(Admitted { _permit: permit, _per_ip: per_ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_places_come_back_when_dropped() {
        let admission = Admission::new(3, 2);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::TooManyFromAddress);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refused::Full);
        drop(first);
        admission.admit(a).unwrap();
        assert_eq!(admission.per_ip.lock().unwrap().len(), 2);
    }
}
