//! Grows its memory without bound on a batch holding a packet with source port 8888: 16 MiB at
//! a time, reserved without being touched, so it reaches the cap fast.

use flowgate_guest_sdk::{Module, Table, packets};

struct Hog;

impl Module for Hog {
    const NAME: &'static str = "flowgate-test-hog";
    const VERSION: &'static str = "0.1.0";

    fn judge_packed(table: Option<&Table>, input: &[u8], out: &mut Vec<u8>) {
        if packets(input).any(|p| p.ports.is_some_and(|p| p.src == 8888)) {
            let mut hoard = Vec::new();
            loop {
                hoard.push(std::hint::black_box(Vec::<u8>::with_capacity(16 << 20)));
            }
        }
        flowgate_guest_sdk::judge_packed::<Self>(table, input, out);
    }
}

flowgate_guest_sdk::export_module!(Hog);
