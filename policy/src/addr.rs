//! Addresses as integers, and sets of address ranges within one family.
//!
//! IPv4 and IPv6 live in separate key spaces: an IPv4 address is its `u32` value widened to
//! `u128`, and every structure that holds keys is kept per family, so `::/0` never covers an
//! IPv4 address.

use ipnet::IpNet;

/// The address family of a prefix or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The largest key of the family.
    pub(crate) fn max_key(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }
}

/// The family of a prefix.
pub(crate) fn net_family(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// The inclusive key range that a prefix covers.
pub(crate) fn net_range(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// A set of keys of one family: sorted, disjoint, inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: Vec<(u128, u128)>,
}

impl RangeSet {
    /// The union of the given inclusive ranges.
    pub(crate) fn from_ranges(mut ranges: Vec<(u128, u128)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if last.1 == u128::MAX || lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Self { ranges: merged }
    }

    /// The union of the ranges of `nets`.
    pub(crate) fn from_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        Self::from_ranges(nets.into_iter().map(net_range).collect())
    }

    /// The keys of `self` that are not in `other`.
    pub(crate) fn minus(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        for &(lo, hi) in &self.ranges {
            let mut cur = Some(lo);
            for &(olo, ohi) in &other.ranges {
                let Some(start) = cur else { break };
                if ohi < start || olo > hi {
                    continue;
                }
                if olo > start {
                    out.push((start, olo - 1));
                }
                cur = ohi.checked_add(1).filter(|&next| next <= hi);
            }
            if let Some(start) = cur {
                out.push((start, hi));
            }
        }
        RangeSet { ranges: out }
    }

    /// Whether the two sets share a key.
    pub(crate) fn intersects(&self, other: &RangeSet) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            if a.0 <= b.1 && b.0 <= a.1 {
                return true;
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }

    /// Whether the set holds no key.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many keys the set holds, saturating at `u128::MAX` (only `::/0` reaches it).
    pub(crate) fn count(&self) -> u128 {
        self.ranges.iter().fold(0u128, |acc, &(lo, hi)| {
            acc.saturating_add((hi - lo).saturating_add(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> RangeSet {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        RangeSet::from_nets(&nets)
    }

    #[test]
    fn minus_carves_holes() {
        let a = set(&["10.0.0.0/24"]);
        let b = set(&["10.0.0.128/25"]);
        assert_eq!(a.minus(&b), set(&["10.0.0.0/25"]));
        assert_eq!(a.minus(&set(&["10.0.0.0/16"])), RangeSet::default());
        let holes = a.minus(&set(&["10.0.0.4/30", "10.0.0.64/26"]));
        assert_eq!(holes.count(), 256 - 4 - 64);
        assert!(!holes.intersects(&set(&["10.0.0.5/32"])));
        assert!(holes.intersects(&set(&["10.0.0.3/32"])));
    }

    #[test]
    fn merges_adjacent_and_counts_full_space() {
        assert_eq!(
            set(&["10.0.0.0/25", "10.0.0.128/25"]),
            set(&["10.0.0.0/24"])
        );
        assert_eq!(set(&["::/0"]).count(), u128::MAX);
        assert_eq!(set(&["::/1", "8000::/1"]), set(&["::/0"]));
        assert_eq!(set(&["::/0"]).minus(&set(&["::/0"])), RangeSet::default());
        assert_eq!(set(&["::/0"]).minus(&set(&["8000::/1"])), set(&["::/1"]));
    }
}
