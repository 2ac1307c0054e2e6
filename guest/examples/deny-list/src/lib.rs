//! An example policy module: a deny-list in front of flowgate's peering filter. A TCP packet
//! to destination port 23 (telnet) or 445 (SMB) from a known VPC is `drop(denied)`, whatever
//! the peerings say; every other packet gets the peering filter's verdict. README.md lists
//! exactly which verdicts change.
//!
//! It reuses the default guest's WIT conversions (`convert.rs`, included by path): both are
//! generated from the same `wit/`, so the types are the same.

mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../../wit",
    });
}
#[path = "../../../component/src/convert.rs"]
mod convert;

use std::cell::RefCell;

use bindings::exports::flowgate::policy::filter::Guest;
use bindings::flowgate::policy::types::{
    ConfigError, ConfigSummary, Explanation, ModuleInfo, Packet, Verdict,
};
use flowgate_policy::packed::{PACKET_BYTES, VERDICT_BYTES, encode_verdict};
use flowgate_policy::{Config, DropReason, Table};

/// Destination ports refused to TCP.
const DENIED_TCP_PORTS: [u16; 2] = [23, 445];
const TCP: u8 = 6;

/// Whether the deny-list refuses a packet of protocol `proto` to destination port `dst_port`.
fn denied(proto: u8, dst_port: Option<u16>) -> bool {
    proto == TCP && dst_port.is_some_and(|p| DENIED_TCP_PORTS.contains(&p))
}

/// The deny-list over the peering filter's verdict: a packet from an unknown VPC stays
/// `drop(unknown-vpc)`.
fn decide(
    verdict: flowgate_policy::Verdict,
    proto: u8,
    dst_port: Option<u16>,
) -> flowgate_policy::Verdict {
    let known = verdict != flowgate_policy::Verdict::Drop(DropReason::UnknownVpc);
    if known && denied(proto, dst_port) {
        flowgate_policy::Verdict::Drop(DropReason::Denied)
    } else {
        verdict
    }
}

struct State {
    config: Config,
    table: Table,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

struct Module;

impl Guest for Module {
    fn info() -> ModuleInfo {
        ModuleInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            wit_version: "0.3.0".to_owned(),
        }
    }

    fn configure(config: String) -> Result<ConfigSummary, ConfigError> {
        let parsed = flowgate_policy::parse(&config, None).map_err(convert::config_error)?;
        let table = Table::build(&parsed);
        let summary = convert::summary(&parsed, &table);
        STATE.with(|s| {
            *s.borrow_mut() = Some(State {
                config: parsed,
                table,
            })
        });
        Ok(summary)
    }

    fn judge(packets: Vec<Packet>) -> Vec<Verdict> {
        STATE.with(|s| {
            let state = s.borrow();
            packets
                .into_iter()
                .map(|p| {
                    let packet = convert::packet(p);
                    let verdict = match state.as_ref() {
                        Some(state) => state.table.lookup(&packet),
                        None => flowgate_policy::Verdict::default(),
                    };
                    convert::verdict(decide(verdict, packet.proto, packet.ports.map(|p| p.dst)))
                })
                .collect()
        })
    }

    fn judge_packed(packets: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        STATE.with(|s| {
            let state = s.borrow();
            flowgate_policy::packed::judge_packed(
                state.as_ref().map(|s| &s.table),
                &packets,
                &mut out,
            );
        });
        // The peering filter has answered every record; the deny-list overrides some.
        for (rec, verdict) in packets
            .chunks_exact(PACKET_BYTES)
            .zip(out.chunks_exact_mut(VERDICT_BYTES))
        {
            if let (Ok(rec), Ok(word)) = (
                <&[u8; PACKET_BYTES]>::try_from(rec),
                <[u8; VERDICT_BYTES]>::try_from(&*verdict),
            ) {
                let packet = flowgate_policy::packed::decode_packet(rec);
                if let Some(before) = flowgate_policy::packed::decode_verdict(word) {
                    let after = decide(before, packet.proto, packet.ports.map(|p| p.dst));
                    verdict.copy_from_slice(&encode_verdict(after));
                }
            }
        }
        out
    }

    fn explain(packet: Packet) -> Explanation {
        let packet = convert::packet(packet);
        let dst_port = packet.ports.map(|p| p.dst);
        STATE.with(|s| {
            let state = s.borrow();
            let Some(State { config, table }) = state.as_ref() else {
                return convert::explanation(flowgate_policy::Explanation::unconfigured());
            };
            let mut e = flowgate_policy::explain(config, table, &packet);
            let verdict = decide(e.verdict, packet.proto, dst_port);
            if verdict != e.verdict {
                e.notes.insert(
                    0,
                    format!(
                        "denied by the deny-list: TCP to destination port {}; the peering filter alone says {}",
                        dst_port.unwrap_or_default(),
                        table.verdict_text(e.verdict)
                    ),
                );
                e.verdict = verdict;
            }
            convert::explanation(e)
        })
    }
}

bindings::export!(Module with_types_in bindings);
