//! Hands over the state of another configuration than the one it was given: one VPC whose
//! packets are all dropped. Instances that adopt it judge otherwise than the configured one.

use flowgate_guest_sdk::{Module, Table};

struct Drifting;

/// The configuration whose state is handed over.
const OTHER: &str = "kind: VPCInfo\nmetadata: {name: lone}\nspec: {vni: 1}\n";

impl Module for Drifting {
    const NAME: &'static str = "flowgate-test-drifting";
    const VERSION: &'static str = "0.1.0";

    fn export_state(_: &Table) -> Option<Vec<u32>> {
        let config = flowgate_policy::parse(OTHER, None).ok()?;
        Some(Table::build(&config).ok()?.export_state())
    }
}

flowgate_guest_sdk::export_module!(Drifting);
