//! Test guests: the default policy with one deliberate fault, chosen by a cargo feature. The
//! faults fire on packets the tests aim at them (by source port), so a module can pass its
//! canary and still fail under traffic.

mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
    });
}
#[path = "../../component/src/convert.rs"]
mod convert;

use std::cell::RefCell;

use bindings::exports::flowgate::policy::filter::Guest;
use bindings::flowgate::policy::types::{
    ConfigError, ConfigSummary, Explanation, ModuleInfo, Packet, Verdict,
};
use flowgate_policy::{Config, Table};

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
    static HOARD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// The source port that sets off this guest's fault.
const TRIGGER: u16 = if cfg!(feature = "trap") {
    6666
} else if cfg!(feature = "spin") {
    7777
} else if cfg!(feature = "hog") {
    8888
} else {
    0
};

fn variant() -> &'static str {
    if cfg!(feature = "trap") {
        "trap"
    } else if cfg!(feature = "spin") {
        "spin"
    } else if cfg!(feature = "hog") {
        "hog"
    } else if cfg!(feature = "short") {
        "short"
    } else if cfg!(feature = "null") {
        "null"
    } else if cfg!(feature = "wrong") {
        "wrong"
    } else {
        "honest"
    }
}

/// Sets off the fault when a packet carries the trigger port.
fn maybe_fail(src_port: Option<u16>) {
    if TRIGGER == 0 || src_port != Some(TRIGGER) {
        return;
    }
    if cfg!(feature = "trap") {
        std::process::abort();
    }
    if cfg!(feature = "spin") {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    if cfg!(feature = "hog") {
        // Reserve 16 MiB at a time without touching it: memory grows fast, to the cap.
        HOARD.with(|h| {
            loop {
                h.borrow_mut()
                    .push(std::hint::black_box(Vec::with_capacity(16 << 20)));
            }
        });
    }
}

struct Module;

impl Guest for Module {
    fn info() -> ModuleInfo {
        ModuleInfo {
            name: format!("flowgate-test-{}", variant()),
            version: if cfg!(feature = "honest-v2") {
                "0.2.0"
            } else {
                "0.1.0"
            }
            .to_owned(),
            wit_version: "0.3.0".to_owned(),
        }
    }

    fn configure(config: String) -> Result<ConfigSummary, ConfigError> {
        let parsed = flowgate_policy::parse(&config, None).map_err(convert::config_error)?;
        let table = Table::build(&parsed);
        let summary = convert::summary(&parsed, &table);
        TABLE.with(|t| *t.borrow_mut() = Some(table));
        CONFIG.with(|c| *c.borrow_mut() = Some(parsed));
        Ok(summary)
    }

    fn judge(_packets: Vec<Packet>) -> Vec<Verdict> {
        // The tests drive the packed path; the typed one is not part of these guests.
        Vec::new()
    }

    fn judge_packed(packets: Vec<u8>) -> Vec<u8> {
        use flowgate_policy::packed::{PACKET_BYTES, VERDICT_BYTES, decode_packet};
        if cfg!(feature = "null") {
            // drop(unknown-vpc) for every record, without reading it: only the crossing.
            return vec![0; packets.len() / PACKET_BYTES * VERDICT_BYTES];
        }
        for rec in packets.chunks_exact(PACKET_BYTES) {
            if let Ok(rec) = <&[u8; PACKET_BYTES]>::try_from(rec) {
                maybe_fail(decode_packet(rec).ports.map(|p| p.src));
            }
        }
        let mut out = Vec::new();
        TABLE.with(|t| {
            flowgate_policy::packed::judge_packed(t.borrow().as_ref(), &packets, &mut out)
        });
        if cfg!(feature = "short") {
            out.truncate(out.len().saturating_sub(4));
        }
        if cfg!(feature = "wrong") {
            // The deliberate mistake: every ICMPv6 packet is `drop(source-not-exposed)`.
            for (rec, verdict) in packets
                .chunks_exact(PACKET_BYTES)
                .zip(out.chunks_exact_mut(VERDICT_BYTES))
            {
                if rec[5] == 58 {
                    verdict.copy_from_slice(&1u32.to_le_bytes());
                }
            }
        }
        out
    }

    fn explain(packet: Packet) -> Explanation {
        let packet = convert::packet(packet);
        TABLE.with(|t| {
            CONFIG.with(|c| match (t.borrow().as_ref(), c.borrow().as_ref()) {
                (Some(table), Some(config)) => {
                    convert::explanation(flowgate_policy::explain(config, table, &packet))
                }
                _ => convert::explanation(flowgate_policy::Explanation::unconfigured()),
            })
        })
    }
}

bindings::export!(Module with_types_in bindings);
