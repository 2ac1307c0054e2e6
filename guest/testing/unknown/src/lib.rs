//! Answers `allow` to a VPC its configuration does not have for every packet with source
//! port 5555: the host refuses the answer as an unknown verdict.

use flowgate_guest_sdk::{Batch, Module, Table, VERDICT_BYTES, Verdict};
use flowgate_policy::VpcId;
use flowgate_policy::packed::encode_verdict;

struct Unknown;

/// The source port that sets it off.
const TRIGGER: u16 = 5555;

impl Module for Unknown {
    const NAME: &'static str = "flowgate-test-unknown";
    const VERSION: &'static str = "0.1.0";

    fn judge_packed(table: Option<&Table>, input: &[u8], out: &mut Vec<u8>) {
        flowgate_guest_sdk::judge_packed::<Self>(table, input, out);
        let Some(batch) = Batch::parse(input) else {
            return;
        };
        let unknown = encode_verdict(Verdict::Allow(VpcId(1_000_000)));
        for (packet, verdict) in batch.packets().zip(out.chunks_exact_mut(VERDICT_BYTES)) {
            if packet
                .and_then(|p| p.ports)
                .is_some_and(|p| p.src == TRIGGER)
            {
                verdict.copy_from_slice(&unknown);
            }
        }
    }
}

flowgate_guest_sdk::export_module!(Unknown);
