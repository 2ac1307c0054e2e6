//! Judges nothing: `drop(unknown-vpc)` (all zero bytes) for every record, records unread. What
//! a call costs without the policy's work.

use flowgate_guest_sdk::{Module, PACKET_BYTES, Table, VERDICT_BYTES};

struct Null;

impl Module for Null {
    const NAME: &'static str = "flowgate-test-null";
    const VERSION: &'static str = "0.1.0";

    fn judge_packed(_: Option<&Table>, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.resize(input.len() / PACKET_BYTES * VERDICT_BYTES, 0);
    }
}

flowgate_guest_sdk::export_module!(Null);
