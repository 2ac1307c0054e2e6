//! What the dataplane counts, and the apply phase that counts a judged batch.

use std::collections::BTreeMap;

use flowgate_policy::{Catalog, DropReason, Verdict, VerdictKind, VpcId};
use serde_json::{Value, json};

flowgate_policy::labels! {
    /// Why the dataplane itself dropped packets, beside the policy's [`DropReason`]s.
    pub enum DataplaneDrop {
        /// Packets whose batch the policy failed to judge.
        PolicyFault => "policy-fault",
        /// Input the dataplane could not read as a packet.
        Malformed => "malformed",
    }
}

/// What the dataplane did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets that got a verdict (including those dropped for a fault or as malformed).
    pub packets: u64,
    /// Policy calls made.
    pub batches: u64,
    /// Packets allowed to exactly one VPC.
    pub allowed: u64,
    /// Packets allowed with an ambiguous destination.
    pub ambiguous: u64,
    /// Packets dropped, for any reason.
    pub dropped: u64,
    /// Dropped packets by reason.
    pub drops: BTreeMap<String, u64>,
    /// Packets forwarded, by destination VPC.
    pub forwarded: BTreeMap<String, u64>,
    /// Batches the policy failed to judge.
    pub faults: u64,
    /// Allowed packets that could not be sent on (no tunnel endpoint for their VPC, or the
    /// send failed); they are also counted as allowed.
    pub unsent: u64,
}

impl Counters {
    /// Counts a packet dropped for `reason`.
    pub fn count_drop(&mut self, reason: &str, packets: u64) {
        self.packets += packets;
        self.dropped += packets;
        *self.drops.entry(reason.to_owned()).or_default() += packets;
    }

    /// Adds `other` into these counters.
    pub fn merge(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.batches += other.batches;
        self.allowed += other.allowed;
        self.ambiguous += other.ambiguous;
        self.dropped += other.dropped;
        self.faults += other.faults;
        self.unsent += other.unsent;
        for (k, v) in &other.drops {
            *self.drops.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.forwarded {
            *self.forwarded.entry(k.clone()).or_default() += v;
        }
    }

    /// The packets judged, by the kind of their verdict.
    pub fn by_kind(&self) -> [(VerdictKind, u64); VerdictKind::COUNT] {
        VerdictKind::ALL.map(|kind| {
            let n = match kind {
                VerdictKind::Allow => self.allowed,
                VerdictKind::AllowAmbiguous => self.ambiguous,
                VerdictKind::Drop => self.dropped,
            };
            (kind, n)
        })
    }

    /// The counters as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "packets": self.packets,
            "batches": self.batches,
            "verdicts": self
                .by_kind()
                .map(|(kind, n)| (kind.as_str().to_owned(), Value::from(n)))
                .into_iter()
                .collect::<serde_json::Map<_, _>>(),
            "drops": self.drops,
            "forwarded": self.forwarded,
            "faults": self.faults,
            "unsent": self.unsent,
        })
    }
}

/// Counts the verdicts of a judged batch, one a packet: the "apply" phase. Per packet it only
/// adds to counters indexed by VPC and reason; names are looked up once per batch.
pub fn apply(
    verdicts: impl IntoIterator<Item = Verdict>,
    catalog: &Catalog,
    counters: &mut Counters,
) {
    // Forwarded packets per destination VPC in this batch (batches go to few VPCs).
    let mut per_vpc: Vec<(VpcId, u64)> = Vec::new();
    let mut drops = [0u64; DropReason::COUNT];
    let mut passed = 0;
    for verdict in verdicts {
        match verdict {
            Verdict::Allow(vpc) => {
                passed += 1;
                counters.allowed += 1;
                match per_vpc.iter_mut().find(|(v, _)| *v == vpc) {
                    Some((_, n)) => *n += 1,
                    None => per_vpc.push((vpc, 1)),
                }
            }
            Verdict::AllowAmbiguous(_) => {
                passed += 1;
                counters.ambiguous += 1;
            }
            Verdict::Drop(reason) => drops[reason.index()] += 1,
        }
    }
    counters.packets += passed;
    for (vpc, n) in per_vpc {
        let name = &catalog.vpc(vpc).name;
        match counters.forwarded.get_mut(name) {
            Some(total) => *total += n,
            None => {
                counters.forwarded.insert(name.clone(), n);
            }
        }
    }
    for (reason, n) in DropReason::ALL.into_iter().zip(drops) {
        if n > 0 {
            counters.count_drop(reason.as_str(), n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_policy::{CandidatesId, VpcEntry};

    #[test]
    fn apply_counts_every_verdict_once() {
        let vpc = |name: &str, vni| VpcEntry {
            name: name.into(),
            vni,
        };
        let catalog = Catalog {
            vpcs: vec![vpc("a", 1), vpc("b", 2)],
            candidate_sets: vec![vec![VpcId(0), VpcId(1)]],
        };
        let verdicts = [
            Verdict::Allow(VpcId(0)),
            Verdict::Allow(VpcId(1)),
            Verdict::Allow(VpcId(0)),
            Verdict::AllowAmbiguous(CandidatesId(0)),
            Verdict::Drop(DropReason::SourceNotExposed),
            Verdict::Drop(DropReason::SourceNotExposed),
            Verdict::Drop(DropReason::UnknownVpc),
        ];
        let mut counters = Counters::default();
        counters.count_drop(DataplaneDrop::Malformed.as_str(), 2);
        apply(verdicts, &catalog, &mut counters);
        apply(verdicts[1..2].iter().copied(), &catalog, &mut counters);
        assert_eq!(
            (
                counters.packets,
                counters.allowed,
                counters.ambiguous,
                counters.dropped
            ),
            (10, 4, 1, 5)
        );
        let forwarded: Vec<(&str, u64)> = counters
            .forwarded
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(forwarded, [("a", 2), ("b", 2)]);
        let drops: Vec<(&str, u64)> = counters
            .drops
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            drops,
            [
                ("malformed", 2),
                ("source-not-exposed", 2),
                ("unknown-vpc", 1)
            ]
        );
    }
}
