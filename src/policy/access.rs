//! CIDR allow/deny lists. Sets are compiled into sorted, merged address ranges, so a lookup is
//! a binary search whatever the number of entries.

use ipnet::IpNet;
use std::net::IpAddr;

/// A set of CIDRs as sorted disjoint inclusive ranges, one table per family.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut() {
            // Overlapping or adjacent: extend.
            if next(last.1).is_none_or(|n| lo <= n) {
                last.1 = last.1.max(hi);
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x.
    let i = ranges.partition_point(|(lo, _)| *lo <= x);
    i > 0 && x <= ranges[i - 1].1
}

impl CidrSet {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net.trunc() {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        CidrSet {
            v4: merge(v4, |x| x.checked_add(1)),
            v6: merge(v6, |x| x.checked_add(1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in the set. IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }
}

/// A route's access rule: deny wins over allow; a non-empty allow list denies everyone else.
#[derive(Debug, Clone, Default)]
pub struct AccessList {
    pub allow: CidrSet,
    pub deny: CidrSet,
}

impl AccessList {
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> CidrSet {
        CidrSet::new(cidrs.iter().map(|c| c.parse().unwrap()))
    }

    #[test]
    fn the_ingress_seed_examples() {
        let acl = AccessList {
            allow: set(&["10.0.0.0/8", "203.0.113.0/24"]),
            deny: set(&["10.0.50.0/24"]),
        };
        assert!(acl.permits("10.0.1.100".parse().unwrap()));
        assert!(!acl.permits("10.0.50.10".parse().unwrap()));
        assert!(!acl.permits("1.2.3.4".parse().unwrap()));
        assert!(acl.permits("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn ranges_merge_and_edges_hold() {
        let s = set(&[
            "10.0.0.0/24",
            "10.0.1.0/24",
            "10.0.0.128/25",
            "0.0.0.0/32",
            "255.255.255.255/32",
        ]);
        assert_eq!(s.v4.len(), 3);
        for yes in ["10.0.0.0", "10.0.1.255", "0.0.0.0", "255.255.255.255"] {
            assert!(s.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["10.0.2.0", "9.255.255.255", "0.0.0.1"] {
            assert!(!s.contains(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let s = set(&["2001:db8::/32", "192.168.0.0/16"]);
        assert!(s.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!s.contains("2001:db9::".parse().unwrap()));
        assert!(s.contains("::ffff:192.168.3.4".parse().unwrap()));
        let all6 = set(&["::/0"]);
        assert!(all6.contains("ffff::1".parse().unwrap()));
    }

    #[test]
    fn deny_only_and_host_bits_are_truncated() {
        let acl = AccessList {
            allow: CidrSet::default(),
            deny: set(&["10.0.0.77/8"]),
        };
        assert!(!acl.permits("10.200.0.1".parse().unwrap()));
        assert!(acl.permits("11.0.0.1".parse().unwrap()));
    }
}
