//! Caps the TLS handshakes in progress per client address, so that one
//! address cannot hold every connection slot with handshakes it never
//! finishes (each is cut at `handshake_timeout` anyway; this bounds how many
//! one address may have open at once). IPv4 addresses count one by one
//! (IPv4-mapped IPv6 addresses as their IPv4 address); IPv6 addresses count
//! per /64, the block one host usually gets. A [`Ticket`] holds the place
//! until dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Handshakes in progress per address.
#[derive(Debug)]
pub struct HandshakeGate {
    max_per_addr: usize,
    pending: Mutex<HashMap<IpAddr, usize>>,
}

/// One handshake in progress; frees its place when dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<HandshakeGate>,
    key: IpAddr,
}

/// The address a client's handshakes count against.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl HandshakeGate {
    pub fn new(max_per_addr: usize) -> Arc<HandshakeGate> {
        Arc::new(HandshakeGate {
            max_per_addr: max_per_addr.max(1),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more handshake from `ip`, or `None` when that
    /// address already has `max_per_addr` in progress.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        self.try_enter_within(ip, self.max_per_addr)
    }

    /// As [`Self::try_enter`], with the cap in force now (`[server]
    /// max_pending_handshakes_per_addr` of the live configuration).
    pub fn try_enter_within(self: &Arc<Self>, ip: IpAddr, max_per_addr: usize) -> Option<Ticket> {
        let key = key(ip);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let n = pending.entry(key).or_insert(0);
        if *n >= max_per_addr.max(1) {
            return None;
        }
        *n += 1;
        Some(Ticket {
            gate: self.clone(),
            key,
        })
    }

    /// Handshakes in progress from `ip`'s address (or /64).
    pub fn pending(&self, ip: IpAddr) -> usize {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.get(&key(ip)).copied().unwrap_or(0)
    }

    /// Addresses with a handshake in progress (the map never keeps others).
    pub fn addresses(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut pending = self.gate.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pending.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_one_address_and_not_the_others() {
        let gate = HandshakeGate::new(2);
        let a = gate.try_enter(ip("192.0.2.1")).unwrap();
        let _b = gate.try_enter(ip("192.0.2.1")).unwrap();
        assert!(gate.try_enter(ip("192.0.2.1")).is_none());
        assert_eq!(gate.pending(ip("192.0.2.1")), 2);
        // Another address is not affected.
        let _c = gate.try_enter(ip("192.0.2.2")).unwrap();
        // A finished handshake frees its place.
        drop(a);
        assert_eq!(gate.pending(ip("192.0.2.1")), 1);
        assert!(gate.try_enter(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn the_map_forgets_addresses_with_nothing_pending() {
        let gate = HandshakeGate::new(4);
        let tickets: Vec<_> = (0..50)
            .map(|i| gate.try_enter(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(gate.addresses(), 50);
        drop(tickets);
        assert_eq!(gate.addresses(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let gate = HandshakeGate::new(1);
        let _a = gate.try_enter(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            gate.try_enter(ip("2001:db8:1:2:ffff::9")).is_none(),
            "same /64"
        );
        assert!(gate.try_enter(ip("2001:db8:1:3::1")).is_some(), "other /64");
        let _b = gate.try_enter(ip("198.51.100.7")).unwrap();
        assert!(gate.try_enter(ip("::ffff:198.51.100.7")).is_none());
    }

    #[test]
    fn zero_means_one() {
        let gate = HandshakeGate::new(0);
        let _a = gate.try_enter(ip("192.0.2.1")).unwrap();
        assert!(gate.try_enter(ip("192.0.2.1")).is_none());
    }
}
