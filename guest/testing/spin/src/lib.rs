//! Loops forever on a batch holding a packet with source port 7777.

use flowgate_guest_sdk::{Module, Table, packets};

struct Spin;

impl Module for Spin {
    const NAME: &'static str = "flowgate-test-spin";
    const VERSION: &'static str = "0.1.0";

    fn judge_packed(table: Option<&Table>, input: &[u8], out: &mut Vec<u8>) {
        if packets(input).any(|p| p.ports.is_some_and(|p| p.src == 7777)) {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        flowgate_guest_sdk::judge_packed::<Self>(table, input, out);
    }
}

flowgate_guest_sdk::export_module!(Spin);
