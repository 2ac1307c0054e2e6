//! Hands over words that are no state: every instance that tries to adopt them refuses them.

use flowgate_guest_sdk::{Module, Table};

struct Garbled;

impl Module for Garbled {
    const NAME: &'static str = "flowgate-test-garbled";
    const VERSION: &'static str = "0.1.0";

    fn export_state(_: &Table) -> Option<Vec<u32>> {
        Some(vec![0x5eed; 1000])
    }
}

flowgate_guest_sdk::export_module!(Garbled);
