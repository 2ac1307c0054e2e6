//! A second honest release: the default policy under another version, for swaps between two
//! good modules.

struct HonestV2;

impl flowgate_guest_sdk::Module for HonestV2 {
    const NAME: &'static str = "flowgate-test-honest";
    const VERSION: &'static str = "0.2.0";
}

flowgate_guest_sdk::export_module!(HonestV2);
