//! The default policy, handing no state over: the host configures every instance.

use flowgate_guest_sdk::{Module, Table};

struct Unshared;

impl Module for Unshared {
    const NAME: &'static str = "flowgate-test-unshared";
    const VERSION: &'static str = "0.1.0";

    fn export_state(_: &Table) -> Option<Vec<u32>> {
        None
    }
}

flowgate_guest_sdk::export_module!(Unshared);
