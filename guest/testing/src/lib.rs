//! Test guests: the default policy with one deliberate fault, chosen by a cargo feature. The
//! faults fire on packets the tests aim at them (by source port), so a module can pass its
//! canary and still fail under traffic.

mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
    });
}

use std::cell::RefCell;

use bindings::exports::flowgate::policy::filter::Guest;
use bindings::flowgate::policy::types::{ConfigError, ConfigSummary, ModuleInfo, Packet, Verdict};
use flowgate_policy::Table;

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
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
        HOARD.with(|h| loop {
            h.borrow_mut().push(std::hint::black_box(Vec::with_capacity(16 << 20)));
        });
    }
}

struct Module;

impl Guest for Module {
    fn info() -> ModuleInfo {
        ModuleInfo {
            name: format!("flowgate-test-{}", variant()),
            version: if cfg!(feature = "honest-v2") { "0.2.0" } else { "0.1.0" }.to_owned(),
            wit_version: "0.1.0".to_owned(),
        }
    }

    fn configure(config: String) -> Result<ConfigSummary, ConfigError> {
        let parsed = flowgate_policy::parse(&config, None).map_err(|e| ConfigError {
            message: e.to_string(),
            object: e.object,
            field: e.field,
            value: e.value,
        })?;
        let table = Table::build(&parsed);
        let catalog = table.catalog();
        let summary = ConfigSummary {
            vpcs: catalog
                .vpcs
                .iter()
                .map(|v| bindings::flowgate::policy::types::Vpc { name: v.name.clone(), vni: v.vni })
                .collect(),
            peerings: parsed.peerings.len() as u32,
            candidate_sets: catalog.candidate_sets.iter().map(|s| s.iter().map(|v| v.0).collect()).collect(),
            notices: parsed.notices.clone(),
        };
        TABLE.with(|t| *t.borrow_mut() = Some(table));
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
        TABLE.with(|t| flowgate_policy::packed::judge_packed(t.borrow().as_ref(), &packets, &mut out));
        if cfg!(feature = "short") {
            out.truncate(out.len().saturating_sub(4));
        }
        out
    }
}

bindings::export!(Module with_types_in bindings);
