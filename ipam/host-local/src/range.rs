//! Address ranges and range sets, and the round-robin walk over a set.
//!
//! Addresses are handled as `u128` so that IPv4 and IPv6 share one code
//! path; IPv4 values simply stay below 2^32. Every range is canonical (see
//! `config.rs`): `start <= end`, both inside `subnet`, same family.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An address as an integer, for ordering and stepping.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` in the family of `like`. For IPv4 `n` must fit in 32
/// bits; callers only pass values derived from IPv4 ranges.
pub fn from_u128(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) name IPv4 addresses, as in
/// Go's `net.IP.To4`; the store and the ranges always use the IPv4 form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One canonical range: a subnet and the inclusive slice of it to allocate
/// from, plus the gateway handed out with every address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Network address and prefix (host bits are zero).
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    fn same_family(&self, ip: IpAddr) -> bool {
        self.subnet.is_ipv4() == ip.is_ipv4()
    }

    /// Whether `ip` lies in `[start, end]` (and therefore in the subnet).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.same_family(ip)
            && to_u128(self.start) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Whether the allocatable slices of the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }

    /// Number of addresses in `[start, end]`; saturates for an IPv6 ::/0-sized range.
    pub fn len(&self) -> u128 {
        to_u128(self.end)
            .saturating_sub(to_u128(self.start))
            .saturating_add(1)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The ranges one address is drawn from: all of one family, none overlapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// Whether `ip` is the gateway of any range of the set. Such addresses
    /// are never handed out.
    pub fn is_gateway(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.ranges.iter().any(|r| r.gateway == ip)
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }

    /// How many addresses the set can hand out: all of its ranges minus the
    /// gateways that fall inside them.
    pub fn capacity(&self) -> u128 {
        let total = self
            .ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.len()));
        let mut gateways: Vec<IpAddr> = self
            .ranges
            .iter()
            .map(|r| r.gateway)
            .filter(|g| self.contains(*g))
            .collect();
        gateways.sort();
        gateways.dedup();
        total.saturating_sub(gateways.len() as u128)
    }

    /// Every allocatable address once, round-robin: starting just after
    /// `last` when it lies in the set, else at the first range's start, and
    /// wrapping across the ranges in order. Gateways are skipped.
    pub fn candidates(&self, last: Option<IpAddr>) -> Candidates<'_> {
        let total = self
            .ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.len()));
        let mut it = Candidates {
            set: self,
            idx: 0,
            cur: 0,
            remaining: total,
        };
        let Some(first) = self.ranges.first() else {
            it.remaining = 0;
            return it;
        };
        it.cur = to_u128(first.start);
        if let Some(last) = last.map(canonical_ip) {
            if let Some(idx) = self.ranges.iter().position(|r| r.contains(last)) {
                it.idx = idx;
                it.cur = to_u128(last);
                it.advance();
            }
        }
        it
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Iterator returned by [`RangeSet::candidates`]: yields each non-gateway
/// address of the set with the range it belongs to, at most once.
pub struct Candidates<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: u128,
    /// Positions (gateways included) still to visit.
    remaining: u128,
}

impl Candidates<'_> {
    fn advance(&mut self) {
        let Some(range) = self.set.ranges.get(self.idx) else {
            return;
        };
        if self.cur >= to_u128(range.end) {
            self.idx = (self.idx + 1) % self.set.ranges.len();
            if let Some(next) = self.set.ranges.get(self.idx) {
                self.cur = to_u128(next.start);
            }
        } else {
            self.cur += 1;
        }
    }
}

impl<'a> Iterator for Candidates<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        while self.remaining > 0 {
            self.remaining -= 1;
            let set: &'a RangeSet = self.set;
            let range = set.ranges.get(self.idx)?;
            let ip = from_u128(self.cur, range.start);
            self.advance();
            if !set.is_gateway(ip) {
                return Some((ip, range));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(subnet: &str, start: &str, end: &str, gw: &str) -> Range {
        Range {
            subnet: subnet.parse().unwrap(),
            start: ip(start),
            end: ip(end),
            gateway: ip(gw),
        }
    }

    fn all(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        set.candidates(last.map(ip))
            .map(|(a, _)| a.to_string())
            .collect()
    }

    #[test]
    fn walks_from_start_and_skips_the_gateway() {
        let set = RangeSet {
            ranges: vec![range("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.1")],
        };
        assert_eq!(
            all(&set, None),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(set.capacity(), 5);
    }

    #[test]
    fn round_robin_resumes_after_last_and_wraps() {
        let set = RangeSet {
            ranges: vec![range("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.1")],
        };
        assert_eq!(
            all(&set, Some("10.0.0.4")),
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        // The last address of the set wraps to the start.
        assert_eq!(all(&set, Some("10.0.0.6"))[0], "10.0.0.2");
        // A last address outside the set (config changed) starts over.
        assert_eq!(all(&set, Some("192.168.0.1"))[0], "10.0.0.2");
        assert_eq!(all(&set, Some("fd00::1"))[0], "10.0.0.2");
    }

    #[test]
    fn wraps_across_ranges_of_a_set() {
        let set = RangeSet {
            ranges: vec![
                range("10.0.0.0/24", "10.0.0.10", "10.0.0.11", "10.0.0.1"),
                range("10.0.1.0/24", "10.0.1.1", "10.0.1.3", "10.0.1.1"),
            ],
        };
        assert_eq!(
            all(&set, None),
            ["10.0.0.10", "10.0.0.11", "10.0.1.2", "10.0.1.3"]
        );
        assert_eq!(
            all(&set, Some("10.0.0.11")),
            ["10.0.1.2", "10.0.1.3", "10.0.0.10", "10.0.0.11"]
        );
        assert_eq!(
            all(&set, Some("10.0.1.3")),
            ["10.0.0.10", "10.0.0.11", "10.0.1.2", "10.0.1.3"]
        );
        assert_eq!(set.capacity(), 4);
        assert_eq!(set.to_string(), "10.0.0.10-10.0.0.11,10.0.1.1-10.0.1.3");
        let (a, r) = set.candidates(None).nth(2).unwrap();
        assert_eq!((a, r.subnet.prefix()), (ip("10.0.1.2"), 24));
    }

    #[test]
    fn ipv6_at_the_top_of_the_space() {
        let set = RangeSet {
            ranges: vec![range(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd",
            )],
        };
        assert_eq!(
            all(&set, Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            [
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            ]
        );
        // A huge range neither overflows nor iterates forever when asked for a few.
        let huge = RangeSet {
            ranges: vec![range(
                "::/0",
                "::1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "::1",
            )],
        };
        assert_eq!(huge.capacity(), u128::MAX - 1);
        assert_eq!(
            all_n(&huge, Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 2),
            ["::2", "::3"]
        );
    }

    fn all_n(set: &RangeSet, last: Option<&str>, n: usize) -> Vec<String> {
        set.candidates(last.map(ip))
            .take(n)
            .map(|(a, _)| a.to_string())
            .collect()
    }

    #[test]
    fn containment_and_overlap() {
        let a = range("10.0.0.0/24", "10.0.0.10", "10.0.0.20", "10.0.0.1");
        let b = range("10.0.0.0/24", "10.0.0.21", "10.0.0.30", "10.0.0.1");
        let c = range("10.0.0.0/24", "10.0.0.20", "10.0.0.30", "10.0.0.1");
        assert!(a.contains(ip("10.0.0.10")) && a.contains(ip("10.0.0.20")));
        assert!(!a.contains(ip("10.0.0.9")) && !a.contains(ip("10.0.0.21")));
        assert!(a.contains(ip("::ffff:10.0.0.15")));
        assert!(!a.contains(ip("fd00::a")));
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c) && c.overlaps(&a));
        let v6 = range("fd00::/64", "fd00::1", "fd00::ffff", "fd00::1");
        assert!(!a.overlaps(&v6));
    }
}
