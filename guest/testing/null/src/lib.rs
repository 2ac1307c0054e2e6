//! Judges nothing: `drop(unknown-vpc)` (all zero bytes) for every packet, packets unread
//! (only the batch's count). What a call costs without the policy's work.

use flowgate_guest_sdk::{Batch, Module, Table, VERDICT_BYTES};

struct Null;

impl Module for Null {
    const NAME: &'static str = "flowgate-test-null";
    const VERSION: &'static str = "0.1.0";

    fn judge_packed(_: Option<&Table>, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let packets = Batch::parse(input).map_or(0, |b| b.len());
        out.resize(packets * VERDICT_BYTES, 0);
    }
}

flowgate_guest_sdk::export_module!(Null);
