//! flowgate's default policy module: the peering flow filter of `flowgate-policy` behind the
//! `flowgate:policy/filter` interface, with nothing added. The SDK does the adapting.

use flowgate_guest_sdk::{Module, export_module};

struct PeeringFilter;

impl Module for PeeringFilter {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
}

export_module!(PeeringFilter);
