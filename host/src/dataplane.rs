//! The dataplane loop, in phases per batch: gather packets, make one policy call, apply every
//! verdict (count it; the sink forwards or drops the packet).

use std::collections::BTreeMap;

use flowgate_policy::{Catalog, Packet, Verdict};
use serde_json::{Value, json};

use crate::Policy;

/// Packets per policy call unless told otherwise.
pub const DEFAULT_BATCH: usize = 256;

/// The drop reason of packets whose batch the policy failed to judge.
pub const POLICY_FAULT: &str = "policy-fault";
/// The drop reason of input the dataplane could not read as a packet.
pub const MALFORMED: &str = "malformed";

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
        for (k, v) in &other.drops {
            *self.drops.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.forwarded {
            *self.forwarded.entry(k.clone()).or_default() += v;
        }
    }

    /// The counters as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "packets": self.packets,
            "batches": self.batches,
            "verdicts": {"allow": self.allowed, "allow-ambiguous": self.ambiguous, "drop": self.dropped},
            "drops": self.drops,
            "forwarded": self.forwarded,
            "faults": self.faults,
        })
    }
}

/// Judges `packets` in batches of `batch`, calling `sink` with each packet and its verdict
/// (`None`: the policy failed on its batch, which is dropped as `policy-fault` and the policy
/// restarted). Returns an error only when the policy cannot be restarted.
pub fn judge_all(
    policy: &mut dyn Policy,
    packets: &[Packet],
    batch: usize,
    counters: &mut Counters,
    mut sink: impl FnMut(&Packet, Option<Verdict>),
) -> anyhow::Result<()> {
    let mut verdicts = vec![Verdict::default(); batch.max(1)];
    for chunk in packets.chunks(batch.max(1)) {
        let out = &mut verdicts[..chunk.len()];
        counters.batches += 1;
        if let Err(fault) = policy.judge(chunk, out) {
            counters.faults += 1;
            counters.count_drop(POLICY_FAULT, chunk.len() as u64);
            chunk.iter().for_each(|p| sink(p, None));
            policy.restart().map_err(|e| {
                anyhow::anyhow!("the policy failed ({fault}) and could not be restarted: {e:#}")
            })?;
            continue;
        }
        apply(chunk, out, policy.catalog(), counters);
        for (packet, &verdict) in chunk.iter().zip(out.iter()) {
            sink(packet, Some(verdict));
        }
    }
    Ok(())
}

/// Counts the verdicts of a judged batch: the "apply" phase.
pub fn apply(packets: &[Packet], verdicts: &[Verdict], catalog: &Catalog, counters: &mut Counters) {
    for &verdict in verdicts.iter().take(packets.len()) {
        match verdict {
            Verdict::Allow(vpc) => {
                counters.packets += 1;
                counters.allowed += 1;
                let name = &catalog.vpc(vpc).name;
                match counters.forwarded.get_mut(name) {
                    Some(n) => *n += 1,
                    None => {
                        counters.forwarded.insert(name.clone(), 1);
                    }
                }
            }
            Verdict::AllowAmbiguous(_) => {
                counters.packets += 1;
                counters.ambiguous += 1;
            }
            Verdict::Drop(reason) => counters.count_drop(reason.as_str(), 1),
        }
    }
}
