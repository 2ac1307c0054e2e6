//! flowgate's default policy module: the peering flow filter of `flowgate-policy` behind the
//! `flowgate:policy/filter` interface. Only an adapter: the conversions between WIT types and
//! the library's live in `convert`, the policy itself in the library.

mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
    });
}
mod convert;

use std::cell::RefCell;

use bindings::exports::flowgate::policy::filter::Guest;
use bindings::flowgate::policy::types::{ConfigError, ConfigSummary, ModuleInfo, Packet, Verdict};
use flowgate_policy::Table;

/// The WIT package version this module implements.
const WIT_VERSION: &str = "0.1.0";

thread_local! {
    /// The table of the configuration in force; `None` until `configure` succeeds.
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

struct Module;

impl Guest for Module {
    fn info() -> ModuleInfo {
        ModuleInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            wit_version: WIT_VERSION.to_owned(),
        }
    }

    fn configure(config: String) -> Result<ConfigSummary, ConfigError> {
        let parsed = flowgate_policy::parse(&config, None).map_err(convert::config_error)?;
        let table = Table::build(&parsed);
        let summary = convert::summary(&parsed, &table);
        TABLE.with(|t| *t.borrow_mut() = Some(table));
        Ok(summary)
    }

    fn judge(packets: Vec<Packet>) -> Vec<Verdict> {
        TABLE.with(|t| {
            let table = t.borrow();
            packets
                .into_iter()
                .map(|p| {
                    let packet = convert::packet(p);
                    let verdict = match table.as_ref() {
                        Some(table) => table.lookup(&packet),
                        None => flowgate_policy::Verdict::default(),
                    };
                    convert::verdict(verdict)
                })
                .collect()
        })
    }

    fn judge_packed(packets: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        TABLE.with(|t| {
            flowgate_policy::packed::judge_packed(t.borrow().as_ref(), &packets, &mut out)
        });
        out
    }
}

bindings::export!(Module with_types_in bindings);
