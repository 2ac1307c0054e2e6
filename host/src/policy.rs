//! What judges batches: the [`Policy`] trait, with the policy library called natively
//! ([`NativePolicy`]) and a Wasm module ([`crate::wasm::WasmPolicy`]) behind it, and the
//! [`PolicyFault`] a batch ends with when the module fails on it, and the [`Verdicts`] of a
//! burst judged in columns.

mod verdicts;

use flowgate_policy::packed::{Columns, WordDecoder, judge_packed};
use flowgate_policy::{Catalog, Packet, Table, Verdict};

pub use verdicts::Verdicts;

/// Something that judges batches of packets: a Wasm module or the native library.
///
/// A batch comes as `Packet`s ([`Policy::judge`]) or as a burst a dataplane's decoder laid
/// out in the guest's columns ([`Policy::judge_columns`]: no encode pass, and the verdicts
/// read where they lie).
pub trait Policy {
    /// The names behind the verdicts.
    fn catalog(&self) -> &Catalog;
    /// Judges `packets` into `out` (same length). On error `out` is unspecified.
    fn judge(&mut self, packets: &[Packet], out: &mut [Verdict]) -> Result<(), PolicyFault>;
    /// Judges a burst laid out in columns: one verdict a packet, in the policy's answer
    /// until its next call ([`Policy::last_verdicts`] reads them again).
    fn judge_columns(&mut self, burst: &Columns) -> Result<Verdicts<'_>, PolicyFault>;
    /// The verdicts of the last call, when it was [`Policy::judge_columns`] and succeeded.
    fn last_verdicts(&self) -> Option<Verdicts<'_>>;
    /// Starts over after a fault, with the same configuration. On error, the fault the new
    /// start ended with ([`PolicyFault::Start`] or [`PolicyFault::Host`]).
    fn restart(&mut self) -> Result<(), PolicyFault>;
}

/// The policy library called directly: no sandbox, no crossing.
pub struct NativePolicy {
    table: Table,
    decoder: WordDecoder,
    /// The answer of the last burst judged in columns, and whether it was.
    answer: Vec<u8>,
    answered: bool,
}

impl NativePolicy {
    /// Parses, validates and builds `config`; `file` names it in errors.
    pub fn new(config: &str, file: Option<&str>) -> Result<Self, flowgate_policy::ConfigError> {
        let table = Table::build(&flowgate_policy::parse(config, file)?).map_err(|e| {
            flowgate_policy::ConfigError {
                file: file.map(str::to_owned),
                ..e
            }
        })?;
        Ok(NativePolicy {
            decoder: WordDecoder::new(table.catalog()),
            table,
            answer: Vec::new(),
            answered: false,
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
        self.answered = false;
        self.table.lookup_batch(packets, out);
        Ok(())
    }

    /// The library's own `judge-packed` on the burst, as a module answers it.
    fn judge_columns(&mut self, burst: &Columns) -> Result<Verdicts<'_>, PolicyFault> {
        self.answered = false;
        judge_packed(Some(&self.table), burst.as_bytes(), &mut self.answer);
        let verdicts = Verdicts::check(&self.answer, burst.len(), &self.decoder)?;
        self.answered = true;
        Ok(verdicts)
    }

    fn last_verdicts(&self) -> Option<Verdicts<'_>> {
        self.answered
            .then(|| Verdicts::checked_before(&self.answer, &self.decoder))
    }

    fn restart(&mut self) -> Result<(), PolicyFault> {
        Ok(())
    }
}

/// The error behind a [`PolicyFault::Start`] or [`PolicyFault::Host`], as the policy's own
/// layer typed it: for a Wasm module a [`crate::wasm::StartError`] or a
/// [`crate::wasm::HostFault`], which a caller reaches with `downcast_ref`. (The faults are
/// declared here, below the layers that make them, so they hold those layers' errors boxed.)
pub type FaultSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A batch the module failed to judge. The batch's packets are dropped as `policy-fault`.
/// Most faults are the module's doing; [`PolicyFault::is_module_fault`] tells them from those
/// of the host.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFault {
    /// The guest trapped.
    #[error("the module trapped: {0}")]
    Trap(String),
    /// The guest ran its batch deadline of CPU time (an endless loop, or far too slow). Only
    /// the time its thread ran counts, not the time it waited for a core.
    #[error("the module ran past its deadline of CPU time")]
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
    /// A fresh instance (after a fault, or for a worker that had none) failed as it started:
    /// it trapped, ran out of its CPU time or memory, or refused the configuration it had
    /// accepted before.
    #[error("a fresh instance could not be started: {0}")]
    Start(FaultSource),
    /// The host failed, not the module: it had no room for a fresh instance (its pool is
    /// full), could not map its memory, or could not read the thread's CPU clock.
    #[error("the host failed, not the module: {0}")]
    Host(FaultSource),
    /// The worker has no instance (its last start failed): the batch is not judged.
    #[error("no instance to judge with")]
    NoInstance,
}

flowgate_policy::labels! {
    /// The kinds of [`PolicyFault`], as counters and metrics name them.
    pub enum FaultKind {
        /// [`PolicyFault::Trap`].
        Trap => "trap",
        /// [`PolicyFault::Deadline`].
        Deadline => "deadline",
        /// [`PolicyFault::Memory`].
        Memory => "memory",
        /// [`PolicyFault::WrongLength`].
        WrongLength => "wrong-length",
        /// [`PolicyFault::UnknownVerdict`].
        UnknownVerdict => "unknown-verdict",
        /// [`PolicyFault::Start`].
        StartFailed => "start-failed",
        /// [`PolicyFault::Host`].
        Host => "host",
        /// [`PolicyFault::NoInstance`].
        NoInstance => "no-instance",
    }
}

impl PolicyFault {
    /// The fault's kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            PolicyFault::Trap(_) => FaultKind::Trap,
            PolicyFault::Deadline => FaultKind::Deadline,
            PolicyFault::Memory => FaultKind::Memory,
            PolicyFault::WrongLength { .. } => FaultKind::WrongLength,
            PolicyFault::UnknownVerdict { .. } => FaultKind::UnknownVerdict,
            PolicyFault::Start(_) => FaultKind::StartFailed,
            PolicyFault::Host(_) => FaultKind::Host,
            PolicyFault::NoInstance => FaultKind::NoInstance,
        }
    }

    /// The fault's reason in counters and metrics: its kind's name.
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Whether the module made the fault, and so whether it counts against the module (toward
    /// an auto-revert). The module's: a trap; its own CPU time past the deadline (waiting for
    /// a core does not count, so a busy machine never makes this fault); its memory cap; an
    /// answer of the wrong length or with an unknown verdict; a fresh instance of it that
    /// trapped, ran out of CPU time or memory, or refused its configuration. Not the module's:
    /// the host's failures ([`PolicyFault::Host`]: no room in the instance pool, memory that
    /// could not be mapped, the CPU clock) and a worker with no instance
    /// ([`PolicyFault::NoInstance`], which follows a start failure already counted).
    pub fn is_module_fault(&self) -> bool {
        match self {
            PolicyFault::Trap(_)
            | PolicyFault::Deadline
            | PolicyFault::Memory
            | PolicyFault::WrongLength { .. }
            | PolicyFault::UnknownVerdict { .. }
            | PolicyFault::Start(_) => true,
            PolicyFault::Host(_) | PolicyFault::NoInstance => false,
        }
    }
}
