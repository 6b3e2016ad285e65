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
//!
//! The limits must never refuse honest traffic: a burst of clients from one address (an office
//! behind NAT, a proxy, everyone reconnecting after a restart) is honest.
//! - `max_handshakes_per_ip` binds slow handshakes only. A socket over it is not refused at once:
//!   it gets [`GRACE`] to send its whole request head, in a second pool of places of the same
//!   sizes (in all and per address), and is refused only if it does not. A fast client never
//!   counts against the cap; a slow one (slowloris) is still bounded: one address holds at most
//!   twice the cap, and the sockets in grace never take the places of other addresses'
//!   handshakes.
//! - Behind a reverse proxy every socket comes from the proxy. Sockets from `trusted_proxies`
//!   are not counted per address at accept; their connection is counted, once the head is read,
//!   under the client their `X-Forwarded-For` names ([`Admission::client`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a socket over its address's handshake cap has to send its whole request head.
pub const GRACE: Duration = Duration::from_millis(250);

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
pub(crate) struct Limit<K> {
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
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(Limit { total, taken: Mutex::new(Taken { all: 0, by_key: HashMap::new() }) })
    }

    /// Takes a place for `key`, of at most `per_key` (0: no limit per key): `Err(true)` when all
    /// are taken, `Err(false)` when the key's are.
    pub(crate) fn take(self: &Arc<Self>, key: K, per_key: usize) -> Result<Place<K>, bool> {
        let mut taken = self.taken.lock().unwrap_or_else(|poison| poison.into_inner());
        if taken.all >= self.total {
            return Err(true);
        }
        // Without a limit per key nothing is counted per key. A key seen here for the first time
        // starts at 0 < limit, so no entry is left behind at 0 when one is refused.
        let counted = if per_key != 0 {
            let count = taken.by_key.entry(key.clone()).or_insert(0);
            if *count >= per_key {
                return Err(false);
            }
            *count += 1;
            Some(key)
        } else {
            None
        };
        taken.all += 1;
        Ok(Place { limit: self.clone(), key: counted })
    }
}

/// One place within a [`Limit`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Place<K: Hash + Eq> {
    limit: Arc<Limit<K>>,
    /// The key it is counted under, if it is counted under one.
    key: Option<K>,
}

impl<K: Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut taken = self.limit.taken.lock().unwrap_or_else(|poison| poison.into_inner());
        taken.all -= 1;
        if let Some(key) = &self.key
            && let Some(count) = taken.by_key.get_mut(key)
        {
            *count -= 1;
            if *count == 0 {
                taken.by_key.remove(key);
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
    /// Sockets over their address's handshake cap, finishing their head within [`GRACE`].
    in_grace: Arc<Limit<ClientKey>>,
    /// Connections by plugin and shard: what each plugin instance holds params for.
    seats: Arc<Limit<(Arc<str>, usize)>>,
    /// The reverse proxies whose `X-Forwarded-For` names the real client.
    trusted_proxies: Vec<ipnet::IpNet>,
}

/// An accepted socket's places within the limits; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    /// Its connection place, for its whole life, once its client is known ([`Admission::connect`]).
    connection: Option<Place<ClientKey>>,
    /// Its handshake place, until the handshake ends.
    handshake: Option<Place<ClientKey>>,
    /// Over its address's handshake cap: it must send its head within [`GRACE`].
    pub in_grace: bool,
    /// From a trusted proxy: its client is the one `X-Forwarded-For` names.
    pub proxied: bool,
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
    /// `max_handshakes` sockets in their handshake in all and `handshakes_per_ip` per client; the
    /// sockets of `trusted_proxies` are counted under the client they forward.
    pub fn new(
        max_connections: usize,
        per_ip: usize,
        max_handshakes: usize,
        handshakes_per_ip: usize,
        trusted_proxies: Vec<ipnet::IpNet>,
    ) -> Self {
        Admission {
            connections: Limit::new(max_connections),
            connections_per_ip: per_ip,
            handshakes: Limit::new(max_handshakes),
            in_grace: Limit::new(max_handshakes),
            handshakes_per_ip,
            seats: Limit::new(usize::MAX),
            trusted_proxies,
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|proxy| proxy.contains(&ip))
    }

    /// The client a socket from `peer` stands for: with a trusted proxy, the rightmost address of
    /// its `forwarded_for` (`X-Forwarded-For`) that is not a trusted proxy itself (the one the
    /// proxies saw); otherwise `peer`, whatever the socket claims.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let (true, Some(chain)) = (self.trusts(peer), forwarded_for) else { return peer };
        let mut client = peer;
        for hop in chain.rsplit(',').map(str::trim) {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }

    /// A seat for a connection of `plugin` on shard `shard`, if the plugin's instance there holds
    /// fewer than `per_instance` connections.
    pub fn seat(&self, plugin: Arc<str>, shard: usize, per_instance: usize) -> Option<Seat> {
        self.seats.take((plugin, shard), per_instance).ok().map(|place| Seat { _place: place })
    }

    /// Admits a socket from `ip` into its handshake, or says why not. Over its address's cap it
    /// is admitted [`in grace`](Admitted::in_grace); a trusted proxy's sockets are not counted
    /// per address.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let proxied = self.trusts(ip);
        let per_ip = if proxied { 0 } else { self.handshakes_per_ip };
        let (handshake, in_grace) = match self.handshakes.take(ClientKey::of(ip), per_ip) {
            Ok(place) => (place, false),
            Err(true) => return Err(Refused::Busy),
            Err(false) => match self.in_grace.take(ClientKey::of(ip), per_ip) {
                Ok(place) => (place, true),
                Err(all) => return Err(if all { Refused::Busy } else { Refused::BusyFromAddress }),
            },
        };
        let mut admitted = Admitted { connection: None, handshake: Some(handshake), in_grace, proxied };
        if !proxied {
            self.connect(&mut admitted, ip)?;
        }
        Ok(admitted)
    }

    /// Gives `admitted` its connection place, counted under `client`, or says why not.
    pub fn connect(&self, admitted: &mut Admitted, client: IpAddr) -> Result<(), Refused> {
        let place = self
            .connections
            .take(ClientKey::of(client), self.connections_per_ip)
            .map_err(|all| if all { Refused::Full } else { Refused::TooManyFromAddress })?;
        admitted.connection = Some(place);
        Ok(())
    }
}

/// One address of an `X-Forwarded-For` list: an IP, an IPv4 with a port, or `[IPv6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse().ok().or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_places_come_back_when_dropped() {
        let admission = Admission::new(3, 2, 100, 100, Vec::new());
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
    fn handshakes_over_an_address_cap_are_admitted_in_grace_within_bounds_of_their_own() {
        let admission = Admission::new(100, 0, 4, 2, Vec::new());
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let mut first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        let third = admission.admit(a).unwrap();
        assert!(!first.in_grace && third.in_grace, "over its address's cap, a socket gets grace, not a 503");
        let _fourth = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::BusyFromAddress, "grace is capped per address too");
        let others: Vec<Admitted> = (0..2).map(|_| admission.admit(b).unwrap()).collect();
        assert!(others.iter().all(|other| !other.in_grace), "one address's grace takes no other's places");
        drop(third);
        first.handshake_done();
        let fifth = admission.admit(a).expect("a finished handshake frees its place, not its connection's");
        assert!(!fifth.in_grace);
        assert_eq!(admission.connections.taken.lock().unwrap().all, 6, "the dropped one gave its place back");
    }

    #[test]
    fn a_trusted_proxys_sockets_are_counted_under_the_client_it_forwards() {
        let proxy = IpAddr::from([127, 0, 0, 1]);
        let admission = Admission::new(100, 1, 100, 1, vec!["127.0.0.0/8".parse().unwrap()]);
        let from_proxy: Vec<Admitted> = (0..3).map(|_| admission.admit(proxy).unwrap()).collect();
        assert!(from_proxy.iter().all(|admitted| admitted.proxied && !admitted.in_grace), "no per-address cap");
        let client = admission.client(proxy, Some("203.0.113.9, 127.0.0.2"));
        assert_eq!(client, IpAddr::from([203, 0, 113, 9]), "the rightmost address that is not a proxy");
        let [mut first, mut second, mut third] = <[Admitted; 3]>::try_from(from_proxy).unwrap();
        admission.connect(&mut first, client).unwrap();
        assert_eq!(admission.connect(&mut second, client).unwrap_err(), Refused::TooManyFromAddress);
        admission.connect(&mut third, admission.client(proxy, Some("198.51.100.1"))).unwrap();
        let stranger = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(admission.client(stranger, Some("203.0.113.9")), stranger, "only a trusted proxy is believed");
        assert_eq!(admission.client(proxy, Some("junk, 203.0.113.9")), IpAddr::from([203, 0, 113, 9]));
        assert_eq!(admission.client(proxy, Some("not an address")), proxy);
        assert_eq!(admission.client(proxy, Some("[2001:db8::1]:4711")), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn each_plugin_instance_seats_its_share_of_connections() {
        assert_eq!(seats_per_instance(64 << 20, 4096), 8192);
        assert_eq!(seats_per_instance(1 << 20, 1 << 20), 1, "at least one");
        let admission = Admission::new(100, 0, 100, 100, Vec::new());
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
        let admission = Admission::new(100, 1, 100, 100, Vec::new());
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
