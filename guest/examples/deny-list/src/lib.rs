//! An example policy module: a deny-list in front of flowgate's peering filter. A TCP packet
//! to destination port 23 (telnet) or 445 (SMB) from a known VPC is `drop(denied)`, whatever
//! the peerings say; every other packet gets the peering filter's verdict. README.md lists
//! exactly which verdicts change.

use flowgate_guest_sdk::{DropReason, Module, Packet, Verdict, export_module};

/// Destination ports refused to TCP.
const DENIED_TCP_PORTS: [u16; 2] = [23, 445];
const TCP: u8 = 6;

struct DenyList;

impl Module for DenyList {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REVIEWS: bool = true;

    /// The SDK calls this for packets from known VPCs only: an unknown VPC's packet stays
    /// `drop(unknown-vpc)`.
    fn review(packet: &Packet, verdict: Verdict) -> Verdict {
        match packet.ports {
            Some(p) if packet.proto == TCP && DENIED_TCP_PORTS.contains(&p.dst) => {
                Verdict::Drop(DropReason::Denied)
            }
            _ => verdict,
        }
    }

    fn review_note(packet: &Packet, filter: &str) -> String {
        let port = packet.ports.map(|p| p.dst).unwrap_or_default();
        format!(
            "denied by the deny-list: TCP to destination port {port}; the peering filter alone says {filter}"
        )
    }
}

export_module!(DenyList);
