//! Port ranges and port lists, as written in a `ports:` field.

use std::fmt;

/// An inclusive range of L4 ports, `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub lo: u16,
    /// Last port of the range (inclusive).
    pub hi: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A non-empty set of ports: sorted, disjoint, non-adjacent ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortList(Vec<PortRange>);

/// Why a `ports` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    /// Nothing between two commas, or an empty string.
    #[error("empty port list entry")]
    Empty,
    /// Not a decimal number.
    #[error("`{0}` is not a port number")]
    NotANumber(String),
    /// A bound above 65535.
    #[error("port {0} is above 65535")]
    TooLarge(u64),
    /// A range written high to low.
    #[error("range {lo}-{hi} has its low end above its high end")]
    Reversed {
        /// The low end as written.
        lo: u16,
        /// The high end as written.
        hi: u16,
    },
}

impl PortList {
    /// Parses `80`, `80-90` or a comma list such as `22, 80-90`.
    pub fn parse(text: &str) -> Result<Self, PortsError> {
        let mut ranges = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(PortsError::Empty);
            }
            let range = match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
                    if lo > hi {
                        return Err(PortsError::Reversed { lo, hi });
                    }
                    PortRange { lo, hi }
                }
                None => {
                    let port = parse_port(item)?;
                    PortRange { lo: port, hi: port }
                }
            };
            ranges.push(range);
        }
        Ok(Self::from_ranges(ranges))
    }

    /// Builds a list from any ranges, merging overlapping and adjacent ones.
    /// Returns an empty list when `ranges` is empty.
    pub fn from_ranges(mut ranges: Vec<PortRange>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => {
                    last.hi = last.hi.max(r.hi);
                }
                _ => merged.push(r),
            }
        }
        Self(merged)
    }

    /// Whether `port` is in the list.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

fn parse_port(text: &str) -> Result<u16, PortsError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(PortsError::Empty);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortsError::NotANumber(text.to_owned()));
    }
    // All digits: the only way to fail is overflow, which is above 65535 too.
    let value: u64 = text.parse().unwrap_or(u64::MAX);
    u16::try_from(value).map_err(|_| PortsError::TooLarge(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: u16, hi: u16) -> PortRange {
        PortRange { lo, hi }
    }

    #[test]
    fn parses_single_range_and_list() {
        assert_eq!(PortList::parse("80").unwrap().ranges(), &[r(80, 80)]);
        assert_eq!(PortList::parse("80-90").unwrap().ranges(), &[r(80, 90)]);
        assert_eq!(
            PortList::parse("443, 22,80-90").unwrap().ranges(),
            &[r(22, 22), r(80, 90), r(443, 443)]
        );
    }

    #[test]
    fn merges_overlapping_and_adjacent_ranges() {
        assert_eq!(
            PortList::parse("80-90,85-100,101,200").unwrap().ranges(),
            &[r(80, 101), r(200, 200)]
        );
    }

    #[test]
    fn refuses_bad_values() {
        assert_eq!(PortList::parse(""), Err(PortsError::Empty));
        assert_eq!(PortList::parse("80,,90"), Err(PortsError::Empty));
        assert_eq!(
            PortList::parse("http"),
            Err(PortsError::NotANumber("http".into()))
        );
        assert_eq!(PortList::parse("-5"), Err(PortsError::Empty));
        assert_eq!(PortList::parse("65536"), Err(PortsError::TooLarge(65536)));
        assert_eq!(
            PortList::parse("99999999999999999999999"),
            Err(PortsError::TooLarge(u64::MAX))
        );
        assert_eq!(
            PortList::parse("90-80"),
            Err(PortsError::Reversed { lo: 90, hi: 80 })
        );
    }

    #[test]
    fn contains_and_display() {
        let list = PortList::parse("22,80-90").unwrap();
        assert!(list.contains(22) && list.contains(80) && list.contains(90));
        assert!(!list.contains(23) && !list.contains(91) && !list.contains(0));
        assert_eq!(list.to_string(), "22,80-90");
    }
}
