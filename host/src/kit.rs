//! The policy author's kit: conformance cases run against any module (`flowgate test`), the
//! verdict changes between two modules on the same traffic (`flowgate diff`,
//! `flowgate swap --dry-run`). Explanations come from the module itself
//! ([`WasmPolicy::explain`]).

use std::collections::{BTreeMap, HashMap};

use flowgate_policy::ConfigError;
use flowgate_policy::cases::{Case, Expect};
use flowgate_policy::{Packet, Verdict};

use crate::wasm::{LoadedModule, Runtime, WasmPolicy};
use crate::{NativePolicy, Policy, PolicyFault, StartError};

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: String,
    /// Packets in the case (0 for a case that expects a refusal).
    pub packets: usize,
    /// What differed from the case's expectations, each a readable diff; empty: passed.
    pub problems: Vec<String>,
}

impl CaseOutcome {
    /// Whether the module did what the case expects.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why a policy did not start on a case's configuration.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// It refused the configuration, with this error.
    Config(ConfigError),
    /// It failed for another reason (a module that traps, for example).
    Failed(String),
}

/// Starts the module on a case's configuration.
pub fn start_wasm(
    runtime: &Runtime,
    module: &LoadedModule,
    config: &str,
) -> Result<WasmPolicy, Refusal> {
    WasmPolicy::new(runtime, module, config).map_err(|e| match e {
        StartError::Config(e) => Refusal::Config(e),
        StartError::OverLimit(e) => Refusal::Config(ConfigError::whole(e.to_string())),
        StartError::Module(e) => Refusal::Failed(format!("the module failed to start: {e}")),
    })
}

/// Starts the policy library natively on a case's configuration: the same cases without Wasm.
pub fn start_native(config: &str) -> Result<NativePolicy, Refusal> {
    NativePolicy::new(config, None).map_err(Refusal::Config)
}

/// Runs one conformance case: starts a policy on the case's configuration with `start`, then
/// judges the case's packets in one batch (for a module, on the packed path, as the dataplane
/// does) and compares.
pub fn run_case<P: Policy>(
    case: &Case,
    start: impl FnOnce(&str) -> Result<P, Refusal>,
) -> CaseOutcome {
    let packets = match &case.expect {
        Expect::Verdicts { packets, .. } => packets.len(),
        Expect::Error(_) => 0,
    };
    let problems = match start(&case.config) {
        Err(Refusal::Config(e)) => case.check_error(Some(&e)),
        Err(Refusal::Failed(e)) => vec![e],
        Ok(_) if matches!(case.expect, Expect::Error(_)) => case.check_error(None),
        Ok(mut policy) => {
            let mut fault: Option<PolicyFault> = None;
            let catalog = policy.catalog().clone();
            let problems = case.check_verdicts(&catalog, |packets| {
                let mut out = vec![Verdict::default(); packets.len()];
                match policy.judge(packets, &mut out) {
                    Ok(()) => out,
                    Err(e) => {
                        fault = Some(e);
                        Vec::new()
                    }
                }
            });
            match fault {
                Some(e) => vec![format!("the module failed on the batch: {e}")],
                None => problems,
            }
        }
    };
    CaseOutcome {
        name: case.name.clone(),
        packets,
        problems,
    }
}

/// How verdicts changed from one module to another on the same packets.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    /// Packets judged.
    pub packets: usize,
    /// Packets whose verdict did not change.
    pub unchanged: usize,
    /// Per (old verdict, new verdict) in the spec's notation, how many packets and up to
    /// `samples` of them.
    pub changes: BTreeMap<(String, String), Change>,
}

/// Packets whose verdict went from one value to another.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// How many.
    pub count: usize,
    /// The first few of them, in traffic order.
    pub samples: Vec<Packet>,
}

/// Judges `packets` with both policies in batches of `batch`, and counts the changes. A batch
/// either module fails on is an error: a diff is only worth reading whole.
pub fn diff(
    old: &mut dyn Policy,
    new: &mut dyn Policy,
    packets: &[Packet],
    batch: usize,
    samples: usize,
) -> Result<Diff, PolicyFault> {
    let mut diff = Diff {
        packets: packets.len(),
        ..Diff::default()
    };
    let mut a = vec![Verdict::default(); batch.max(1)];
    let mut b = a.clone();
    let (mut old_text, mut new_text) = (HashMap::new(), HashMap::new());
    for chunk in packets.chunks(batch.max(1)) {
        let (a, b) = (&mut a[..chunk.len()], &mut b[..chunk.len()]);
        old.judge(chunk, a)?;
        new.judge(chunk, b)?;
        for ((packet, &va), &vb) in chunk.iter().zip(a.iter()).zip(b.iter()) {
            // Verdicts are compared by their text (the two modules number VPCs each their
            // own way), written once per distinct verdict.
            let ta = old_text
                .entry(va)
                .or_insert_with(|| old.catalog().verdict_text(va));
            let tb = new_text
                .entry(vb)
                .or_insert_with(|| new.catalog().verdict_text(vb));
            if ta == tb {
                diff.unchanged += 1;
                continue;
            }
            let change = diff.changes.entry((ta.clone(), tb.clone())).or_default();
            change.count += 1;
            if change.samples.len() < samples {
                change.samples.push(*packet);
            }
        }
    }
    Ok(diff)
}
