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
use bindings::flowgate::policy::types::{
    ConfigError, ConfigSummary, Explanation, ModuleInfo, Packet, Verdict,
};
use flowgate_policy::{Config, Table};

/// The WIT package version this module implements.
const WIT_VERSION: &str = "0.3.0";

/// The configuration in force and its table.
struct State {
    config: Config,
    table: Table,
}

thread_local! {
    /// `None` until `configure` succeeds.
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
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
                    convert::verdict(verdict)
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
            )
        });
        out
    }

    fn explain(packet: Packet) -> Explanation {
        let packet = convert::packet(packet);
        STATE.with(|s| match s.borrow().as_ref() {
            Some(state) => convert::explanation(flowgate_policy::explain(
                &state.config,
                &state.table,
                &packet,
            )),
            None => convert::explanation(flowgate_policy::Explanation::unconfigured()),
        })
    }
}

bindings::export!(Module with_types_in bindings);
