//! What judges batches: the [`Policy`] trait, with the policy library called natively
//! ([`NativePolicy`]) and a Wasm module ([`crate::wasm::WasmPolicy`]) behind it, and the
//! [`PolicyFault`] a batch ends with when the module fails on it.

use flowgate_policy::{Catalog, Packet, Table, Verdict};

/// Something that judges batches of packets: a Wasm module or the native library.
pub trait Policy {
    /// The names behind the verdicts.
    fn catalog(&self) -> &Catalog;
    /// Judges `packets` into `out` (same length). On error `out` is unspecified.
    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault>;
    /// Starts over after a fault, with the same configuration.
    fn restart(&mut self) -> anyhow::Result<()>;
}

/// The policy library called directly: no sandbox, no crossing.
pub struct NativePolicy {
    table: Table,
}

impl NativePolicy {
    /// Parses, validates and builds `config`; `file` names it in errors.
    pub fn new(config: &str, file: Option<&str>) -> Result<Self, flowgate_policy::ConfigError> {
        Ok(NativePolicy {
            table: Table::build(&flowgate_policy::parse(config, file)?).map_err(|e| {
                flowgate_policy::ConfigError {
                    file: file.map(str::to_owned),
                    ..e
                }
            })?,
        })
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }
}

impl Policy for NativePolicy {
    fn catalog(&self) -> &Catalog {
        self.table.catalog()
    }

    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault> {
        self.table.lookup_batch(packets, out);
        Ok(())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A batch the module failed to judge. The batch's packets are dropped as `policy-fault`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFault {
    /// The guest trapped.
    #[error("the module trapped: {0}")]
    Trap(String),
    /// The guest ran past the batch deadline (an endless loop, or far too slow).
    #[error("the module ran past its deadline")]
    Deadline,
    /// The guest tried to grow its memory past the cap.
    #[error("the module hit its memory cap")]
    Memory,
    /// The guest answered with the wrong number of verdicts.
    #[error("the module answered {got} verdicts for {expected} packets")]
    WrongLength {
        /// Packets sent.
        expected: usize,
        /// Verdicts received.
        got: usize,
    },
    /// The guest answered a verdict code that does not exist, or names a VPC or candidate set
    /// its configuration does not have.
    #[error("the module answered an unknown verdict for packet {index}")]
    UnknownVerdict {
        /// Position of the packet in the batch.
        index: usize,
    },
    /// A fresh instance could not be started (after a fault, or for a worker that had none).
    #[error("a fresh instance could not be started: {0}")]
    Start(String),
    /// The worker has no instance (its last start failed): the batch is not judged.
    #[error("no instance to judge with")]
    NoInstance,
}

impl PolicyFault {
    /// The fault's reason in counters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyFault::Trap(_) => "trap",
            PolicyFault::Deadline => "deadline",
            PolicyFault::Memory => "memory",
            PolicyFault::WrongLength { .. } => "wrong-length",
            PolicyFault::UnknownVerdict { .. } => "unknown-verdict",
            PolicyFault::Start(_) => "start-failed",
            PolicyFault::NoInstance => "no-instance",
        }
    }
}
