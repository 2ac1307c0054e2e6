//! Answers one verdict too few: the canary refuses it.

use flowgate_guest_sdk::{Module, Table, VERDICT_BYTES};

struct Short;

impl Module for Short {
    const NAME: &'static str = "flowgate-test-short";
    const VERSION: &'static str = "0.1.0";

    fn judge_packed(table: Option<&Table>, input: &[u8], out: &mut Vec<u8>) {
        flowgate_guest_sdk::judge_packed::<Self>(table, input, out);
        out.truncate(out.len().saturating_sub(VERDICT_BYTES));
    }
}

flowgate_guest_sdk::export_module!(Short);
