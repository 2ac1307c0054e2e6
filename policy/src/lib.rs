#![doc = include_str!("../README.md")]

mod addr;
mod batch;
#[cfg(feature = "json")]
pub mod cases;
mod catalog;
pub mod config;
pub mod explain;
#[cfg(feature = "json")]
pub mod json;
mod labels;
pub mod limits;
pub mod model;
#[cfg(feature = "oracle")]
pub mod oracle;
pub mod packed;
pub mod packet;
pub mod ports;
mod prefetch;
#[cfg(feature = "synth")]
pub mod synth;
pub mod table;
mod word;

pub use catalog::{Catalog, VpcEntry};
pub use config::{ConfigError, parse};
pub use explain::{Explanation, explain};
pub use model::Config;
pub use packet::{CandidatesId, DropReason, Packet, Ports, Verdict, VerdictKind, VpcId};
pub use table::{MAX_STATE_WORDS, StateError, StateLoader, Table, TableStats};
