//! Traps (aborts) on a batch holding a packet with source port 6666: passes its canary, fails
//! under aimed traffic.

use flowgate_guest_sdk::{Module, Table, packets};

struct Trap;

impl Module for Trap {
    const NAME: &'static str = "flowgate-test-trap";
    const VERSION: &'static str = "0.1.0";

    fn judge_packed(table: Option<&Table>, input: &[u8], out: &mut Vec<u8>) {
        if packets(input).any(|p| p.ports.is_some_and(|p| p.src == 6666)) {
            std::process::abort();
        }
        flowgate_guest_sdk::judge_packed::<Self>(table, input, out);
    }
}

flowgate_guest_sdk::export_module!(Trap);
