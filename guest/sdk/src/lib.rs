//! Writing a flowgate policy module: the guest side of `wit/policy.wit`.
//!
//! A module is a type that implements [`Module`], exported with [`export_module!`]. Out of the
//! box it is the peering flow filter of [`flowgate_policy`] (the spec's verdicts, the fast
//! packed path, `explain`); a module changes what it needs through the trait's hooks:
//!
//! ```ignore
//! use flowgate_guest_sdk::{Module, Packet, Verdict, DropReason, export_module};
//!
//! struct NoTelnet;
//!
//! impl Module for NoTelnet {
//!     const NAME: &'static str = "no-telnet";
//!     const VERSION: &'static str = "1.0.0";
//!     const REVIEWS: bool = true;
//!
//!     fn review(packet: &Packet, verdict: Verdict) -> Verdict {
//!         match packet.ports {
//!             Some(p) if packet.proto == 6 && p.dst == 23 => Verdict::Drop(DropReason::Denied),
//!             _ => verdict,
//!         }
//!     }
//! }
//!
//! export_module!(NoTelnet);
//! ```
//!
//! The bindings are generated here and nowhere else; conversions between WIT types and the
//! library's live in one file (`convert.rs`); the WIT version is read from `wit/` when the
//! SDK is built.

use std::cell::RefCell;
use std::marker::PhantomData;

pub use flowgate_policy::packed::{Batch, VERDICT_BYTES};
pub use flowgate_policy::{Config, DropReason, Packet, StateLoader, Table, Verdict};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
        default_bindings_module: "flowgate_guest_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "export_filter",
    });
}
mod convert;

use bindings::exports::flowgate::policy::filter::Guest;
use bindings::flowgate::policy::types as wit;

/// The version of the WIT package (`wit/policy.wit`) this SDK implements.
pub const WIT_VERSION: &str = env!("FLOWGATE_WIT_VERSION");

/// A policy module. Every method has a default: the peering flow filter of the spec.
pub trait Module: 'static {
    /// The module's name, as `info` reports it.
    const NAME: &'static str;
    /// The module's version, as `info` reports it.
    const VERSION: &'static str;
    /// Whether [`Module::review`] may change a verdict. When false (the default), the packed
    /// path never decodes a packet for it.
    const REVIEWS: bool = false;

    /// The module's own rule over the peering filter's verdict for one packet from a known
    /// VPC, on every path (packed, typed, explain). Only called when [`Module::REVIEWS`] is
    /// true.
    fn review(packet: &Packet, verdict: Verdict) -> Verdict {
        let _ = packet;
        verdict
    }

    /// The note `explain` puts first when [`Module::review`] changed a verdict; `filter` is
    /// what the peering filter alone says.
    fn review_note(packet: &Packet, filter: &str) -> String {
        let _ = packet;
        format!(
            "changed by {} {}; the peering filter alone says {filter}",
            Self::NAME,
            Self::VERSION
        )
    }

    /// The state other instances of the module adopt instead of configuring
    /// (`export-state`): by default the table's ([`Table::export_state`]), which is all the
    /// default module's judging depends on. `None`: the host configures every instance.
    fn export_state(table: &Table) -> Option<Vec<u32>> {
        Some(table.export_state()).filter(|words| words.len() <= flowgate_policy::MAX_STATE_WORDS)
    }

    /// Judges a packed batch into `out` (4 bytes a verdict, one per packet of the batch, as
    /// `wit/policy.wit` lays them out). By default: [`judge_packed`].
    fn judge_packed(table: Option<&Table>, packets: &[u8], out: &mut Vec<u8>) {
        judge_packed::<Self>(table, packets, out);
    }
}

/// The peering filter over a packed batch, then [`Module::review`] on each packet from a
/// known VPC when the module reviews. Modules that override [`Module::judge_packed`] call this
/// for the verdicts.
pub fn judge_packed<M: Module + ?Sized>(table: Option<&Table>, packets: &[u8], out: &mut Vec<u8>) {
    use flowgate_policy::packed::{decode_verdict, encode_verdict};
    flowgate_policy::packed::judge_packed(table, packets, out);
    // A batch off its layout got no verdicts, and so nothing to review.
    if !M::REVIEWS || out.is_empty() {
        return;
    }
    let Some(batch) = Batch::parse(packets) else {
        return;
    };
    for (packet, verdict) in batch.packets().zip(out.chunks_exact_mut(VERDICT_BYTES)) {
        if let (Some(packet), Ok(word)) = (packet, <[u8; VERDICT_BYTES]>::try_from(&*verdict))
            && let Some(before) = decode_verdict(word)
            && before != Verdict::Drop(DropReason::UnknownVpc)
        {
            verdict.copy_from_slice(&encode_verdict(M::review(&packet, before)));
        }
    }
}

/// The packets of a packed batch, decoded (for modules that look at them before judging):
/// none when the batch does not follow the layout, and none from a packet whose IPv6 address
/// is past the batch's address list on.
pub fn packets(packed: &[u8]) -> impl Iterator<Item = Packet> + '_ {
    Batch::parse(packed)
        .into_iter()
        .flat_map(|batch| batch.packets().map_while(|packet| packet))
}

/// The table in force, and the configuration it was built from when this instance configured
/// it (`None` when it adopted another instance's state).
struct State {
    config: Option<Config>,
    table: Table,
}

/// Most words a part of `export-state` holds (`wit/policy.wit`).
const STATE_PART_WORDS: usize = 1 << 16;

thread_local! {
    /// `None` until `configure` (or `adopt-state`) succeeds.
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    /// The state being exported, made by `export-state` at word 0 and kept until the next
    /// `configure` or `adopt-state`, or `export-state` past its end.
    static EXPORT: RefCell<Option<Vec<u32>>> = const { RefCell::new(None) };
    /// The state being adopted, from its first part to its last.
    static ADOPTING: RefCell<Option<StateLoader>> = const { RefCell::new(None) };
}

/// The WIT `filter` interface implemented for a [`Module`]; [`export_module!`] exports it.
#[doc(hidden)]
pub struct Filter<M>(PhantomData<M>);

impl<M: Module> Filter<M> {
    fn verdict(state: Option<&State>, packet: &Packet) -> Verdict {
        let verdict = state.map_or(Verdict::default(), |s| s.table.lookup(packet));
        if M::REVIEWS && verdict != Verdict::Drop(DropReason::UnknownVpc) {
            M::review(packet, verdict)
        } else {
            verdict
        }
    }
}

impl<M: Module> Guest for Filter<M> {
    fn info() -> wit::ModuleInfo {
        wit::ModuleInfo {
            name: M::NAME.to_owned(),
            version: M::VERSION.to_owned(),
            wit_version: WIT_VERSION.to_owned(),
        }
    }

    fn configure(config: String) -> Result<wit::ConfigSummary, wit::ConfigError> {
        let parsed = flowgate_policy::parse(&config, None).map_err(convert::config_error)?;
        let table = Table::build(&parsed).map_err(convert::config_error)?;
        let summary = convert::summary(&parsed, &table);
        STATE.set(Some(State {
            config: Some(parsed),
            table,
        }));
        EXPORT.set(None);
        Ok(summary)
    }

    fn export_state(at: u32) -> Vec<u32> {
        let at = at as usize;
        EXPORT.with_borrow_mut(|export| {
            if at == 0 || export.is_none() {
                *export = STATE.with_borrow(|s| s.as_ref().and_then(|s| M::export_state(&s.table)));
            }
            let Some(words) = export.as_ref() else {
                return Vec::new();
            };
            if at >= words.len() {
                *export = None;
                return Vec::new();
            }
            let end = words.len().min(at.saturating_add(STATE_PART_WORDS));
            words.get(at..end).unwrap_or_default().to_vec()
        })
    }

    fn adopt_state(part: Vec<u32>, last: bool, vouched: bool) -> Result<(), String> {
        ADOPTING.with_borrow_mut(|adopting| {
            let mut loader = adopting.take().unwrap_or_default();
            loader.push(&part).map_err(|e| e.to_string())?;
            if !last {
                *adopting = Some(loader);
                return Ok(());
            }
            let loaded = if vouched {
                loader.finish_vouched()
            } else {
                loader.finish()
            };
            let table = loaded.map_err(|e| e.to_string())?;
            STATE.set(Some(State {
                config: None,
                table,
            }));
            EXPORT.set(None);
            Ok(())
        })
    }

    fn judge(packets: Vec<wit::Packet>) -> Vec<wit::Verdict> {
        STATE.with(|s| {
            let state = s.borrow();
            packets
                .into_iter()
                .map(|p| convert::verdict(Self::verdict(state.as_ref(), &convert::packet(p))))
                .collect()
        })
    }

    fn judge_packed(packets: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        STATE.with(|s| M::judge_packed(s.borrow().as_ref().map(|s| &s.table), &packets, &mut out));
        out
    }

    fn explain(packet: wit::Packet) -> wit::Explanation {
        let packet = convert::packet(packet);
        STATE.with(|s| {
            let state = s.borrow();
            let Some(state) = state.as_ref() else {
                return convert::explanation(flowgate_policy::Explanation::unconfigured());
            };
            let Some(config) = &state.config else {
                return convert::explanation(flowgate_policy::Explanation::adopted(
                    &state.table,
                    Self::verdict(Some(state), &packet),
                ));
            };
            let mut e = flowgate_policy::explain(config, &state.table, &packet);
            let verdict = Self::verdict(Some(state), &packet);
            if verdict != e.verdict {
                let filter = state.table.verdict_text(e.verdict);
                e.notes.insert(0, M::review_note(&packet, &filter));
                e.verdict = verdict;
            }
            convert::explanation(e)
        })
    }
}

/// Exports a [`Module`] as the component's `flowgate:policy/filter`.
#[macro_export]
macro_rules! export_module {
    ($module:ty) => {
        type __FlowgateFilter = $crate::Filter<$module>;
        $crate::bindings::export_filter!(__FlowgateFilter with_types_in $crate::bindings);
    };
}
