//! Gets one bundled conformance case wrong: every ICMPv6 packet from a known VPC is
//! `drop(source-not-exposed)`, which only the `ipv6-default-and-not` case notices.

use flowgate_guest_sdk::{DropReason, Module, Packet, Verdict};

struct Wrong;

impl Module for Wrong {
    const NAME: &'static str = "flowgate-test-wrong";
    const VERSION: &'static str = "0.1.0";
    const REVIEWS: bool = true;

    fn review(packet: &Packet, verdict: Verdict) -> Verdict {
        const ICMPV6: u8 = 58;
        match packet.proto {
            ICMPV6 => Verdict::Drop(DropReason::SourceNotExposed),
            _ => verdict,
        }
    }
}

flowgate_guest_sdk::export_module!(Wrong);
