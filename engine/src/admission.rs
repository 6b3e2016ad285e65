//! [`Admission`]: the limits a socket meets the moment it is accepted — connections
//! (`max_connections`, `max_connections_per_ip`) and sockets still in their handshake
//! (`max_handshakes`, `max_handshakes_per_ip`) — so a refused client is answered 503 at once and
//! never holds a task, a buffer or a half-registered connection; and the one it meets once its
//! plugin is known: a [`Seat`] in that plugin's instance on its shard, so no instance is sent the
//! params of more connections than its memory cap holds.
//!
//! Clients are counted by [`ClientKey`]: an IPv4 address, or the /64 an IPv6 address belongs to
//! (one subscriber usually holds a whole /64, so counting single IPv6 addresses would limit no
//! one). Nothing here is sized by a fixed table: the counts live in maps that hold only clients
//! with a place.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Where a client is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a client at `ip`: the IPv4 address itself (also when written as IPv4-mapped
    /// IPv6), the /64 prefix of an IPv6 address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    ClientKey(IpAddr::V6(Ipv6Addr::from(segments)))
                }
            },
        }
    }
}

/// One limit: places in all and per key (a client, or a plugin instance).
#[derive(Debug)]
struct Limit<K> {
    /// Places in all.
    total: usize,
    /// Places taken, in all and by key (only keys holding one).
    taken: Mutex<Taken<K>>,
}

#[derive(Debug)]
struct Taken<K> {
    all: usize,
    by_key: HashMap<K, usize>,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    fn new(total: usize) -> Arc<Self> {
        Arc::new(Limit { total, taken: Mutex::new(Taken { all: 0, by_key: HashMap::new() }) })
    }

    /// Takes a place for `key`, of at most `per_key` (0: no limit per key): `Err(true)` when all
    /// are taken, `Err(false)` when the key's are.
    fn take(self: &Arc<Self>, key: K, per_key: usize) -> Result<Place<K>, bool> {
        let mut taken = self.taken.lock().unwrap_or_else(|poison| poison.into_inner());
        if taken.all >= self.total {
            return Err(true);
        }
        // Without a limit per key nothing is counted per key. A key seen here for the first time
        // starts at 0 < limit, so no entry is left behind at 0 when one is refused.
        if per_key != 0 {
            let count = taken.by_key.entry(key.clone()).or_insert(0);
            if *count >= per_key {
                return Err(false);
            }
            *count += 1;
        }
        taken.all += 1;
        Ok(Place { limit: self.clone(), key })
    }
}

/// One place within a [`Limit`]; given back when dropped.
#[derive(Debug)]
struct Place<K: Hash + Eq> {
    limit: Arc<Limit<K>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut taken = self.limit.taken.lock().unwrap_or_else(|poison| poison.into_inner());
        taken.all -= 1;
        if let Some(count) = taken.by_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                taken.by_key.remove(&self.key);
            }
        }
    }
}

/// How many connections' params one plugin instance is sized for: half of `memory_bytes` (the
/// other half is the plugin's code, stack and working memory) over `max_params_bytes`, the most
/// one connection's cached params take (the SDK keeps each connection's parsed params for its
/// life). At least 1.
pub fn seats_per_instance(memory_bytes: usize, max_params_bytes: usize) -> usize {
    (memory_bytes / 2 / max_params_bytes.max(1)).max(1)
}

/// A connection's seat in its plugin's instance on its shard (see [`seats_per_instance`]);
/// given back when dropped.
#[derive(Debug)]
pub struct Seat {
    _place: Place<(Arc<str>, usize)>,
}

/// The limits, shared by every accept.
#[derive(Debug)]
pub struct Admission {
    connections: Arc<Limit<ClientKey>>,
    connections_per_ip: usize,
    handshakes: Arc<Limit<ClientKey>>,
    handshakes_per_ip: usize,
    /// Connections by plugin and shard: what each plugin instance holds params for.
    seats: Arc<Limit<(Arc<str>, usize)>>,
}

/// An accepted socket's places within the limits; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    /// Its connection place, for its whole life.
    _connection: Place<ClientKey>,
    /// Its handshake place, until the handshake ends.
    handshake: Option<Place<ClientKey>>,
}

impl Admitted {
    /// The handshake is over (completed or failed): its place is free for another socket.
    pub fn handshake_done(&mut self) {
        self.handshake = None;
    }
}

/// Why a socket was not admitted; the reason is sent with HTTP 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_connections` are open.
    #[error("server is at its connection limit")]
    Full,
    /// `max_connections_per_ip` are open from this client.
    #[error("too many connections from your address")]
    TooManyFromAddress,
    /// `max_handshakes` sockets are in their handshake.
    #[error("server is busy with other handshakes")]
    Busy,
    /// `max_handshakes_per_ip` sockets of this client are in their handshake.
    #[error("too many handshakes in progress from your address")]
    BusyFromAddress,
}

impl Admission {
    /// Limits of `max_connections` in all and `per_ip` per client (0: none), and of
    /// `max_handshakes` sockets in their handshake in all and `handshakes_per_ip` per client.
    pub fn new(max_connections: usize, per_ip: usize, max_handshakes: usize, handshakes_per_ip: usize) -> Self {
        Admission {
            connections: Limit::new(max_connections),
            connections_per_ip: per_ip,
            handshakes: Limit::new(max_handshakes),
            handshakes_per_ip,
            seats: Limit::new(usize::MAX),
        }
    }

    /// A seat for a connection of `plugin` on shard `shard`, if the plugin's instance there holds
    /// fewer than `per_instance` connections.
    pub fn seat(&self, plugin: Arc<str>, shard: usize, per_instance: usize) -> Option<Seat> {
        self.seats.take((plugin, shard), per_instance).ok().map(|place| Seat { _place: place })
    }

    /// Admits a socket from `ip` into its handshake, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let client = ClientKey::of(ip);
        let handshake = self
            .handshakes
            .take(client, self.handshakes_per_ip)
            .map_err(|all| if all { Refused::Busy } else { Refused::BusyFromAddress })?;
        let connection = self
            .connections
            .take(client, self.connections_per_ip)
            .map_err(|all| if all { Refused::Full } else { Refused::TooManyFromAddress })?;
        Ok(Admitted { _connection: connection, handshake: Some(handshake) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_places_come_back_when_dropped() {
        let admission = Admission::new(3, 2, 100, 100);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::TooManyFromAddress);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refused::Full);
        drop(first);
        admission.admit(a).unwrap();
        assert_eq!(admission.connections.taken.lock().unwrap().by_key.len(), 2);
    }

    #[test]
    fn handshakes_are_limited_until_they_end() {
        let admission = Admission::new(100, 0, 3, 2);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let mut first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::BusyFromAddress);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refused::Busy);
        first.handshake_done();
        let _fourth = admission.admit(a).expect("a finished handshake frees its place, not its connection's");
        assert_eq!(admission.connections.taken.lock().unwrap().all, 4);
    }

    #[test]
    fn each_plugin_instance_seats_its_share_of_connections() {
        assert_eq!(seats_per_instance(64 << 20, 4096), 8192);
        assert_eq!(seats_per_instance(1 << 20, 1 << 20), 1, "at least one");
        let admission = Admission::new(100, 0, 100, 100);
        let quote: Arc<str> = Arc::from("quote");
        let seats: Vec<Seat> = (0..2).map(|_| admission.seat(quote.clone(), 0, 2).unwrap()).collect();
        assert!(admission.seat(quote.clone(), 0, 2).is_none(), "the instance on shard 0 is full");
        assert!(admission.seat(quote.clone(), 1, 2).is_some(), "another shard's instance is not");
        assert!(admission.seat(Arc::from("clock"), 0, 2).is_some(), "nor another plugin's");
        drop(seats);
        assert!(admission.seat(quote, 0, 2).is_some(), "a closed connection frees its seat");
    }

    #[test]
    fn two_addresses_of_one_ipv6_64_share_a_limit() {
        let admission = Admission::new(100, 1, 100, 100);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _first = admission.admit(one).unwrap();
        assert_eq!(admission.admit(same_64).unwrap_err(), Refused::TooManyFromAddress);
        admission.admit(other_64).expect("another /64 is another client");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ClientKey::of(mapped), ClientKey::of(IpAddr::from([10, 0, 0, 1])), "IPv4-mapped is IPv4");
    }
}
