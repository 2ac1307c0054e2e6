//! The names behind a table's verdicts: the VPCs by index and the candidate sets of
//! ambiguous verdicts. A host that runs the policy as a module holds only this part of a
//! table, rebuilt from the module's summary, to name and check the module's answers.

use crate::packet::{CandidatesId, Verdict, VpcId};

/// A VPC as the table knows it: its name and VNI (not the YAML `VPCInfo` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcEntry {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
}

/// The names behind a table's verdicts: its VPCs and the candidate sets of ambiguous
/// verdicts. A host that runs the policy as a module rebuilds it from the module's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The VPCs in name order: a [`VpcId`] indexes this list.
    pub vpcs: Vec<VpcEntry>,
    /// The candidates of each ambiguous verdict, in name order: a [`CandidatesId`] indexes
    /// this list.
    pub candidate_sets: Vec<Vec<VpcId>>,
}

impl Catalog {
    /// The VPC with this id.
    ///
    /// # Panics
    /// If the id is not of this catalog; see [`Catalog::knows`].
    pub fn vpc(&self, id: VpcId) -> &VpcEntry {
        &self.vpcs[id.0 as usize]
    }

    /// The VPC named `name`. (A linear search: a catalog a module hands over need not be
    /// sorted, and this is not on the packet path.)
    pub fn vpc_by_name(&self, name: &str) -> Option<VpcId> {
        self.vpcs
            .iter()
            .position(|v| v.name == name)
            .map(|i| VpcId(i as u32))
    }

    /// The candidates of an ambiguous verdict, in name order.
    ///
    /// # Panics
    /// If the id is not of this catalog; see [`Catalog::knows`].
    pub fn candidates(&self, id: CandidatesId) -> &[VpcId] {
        &self.candidate_sets[id.0 as usize]
    }

    /// Whether every index in `verdict` is of this catalog (a module's answer may not be).
    pub fn knows(&self, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Allow(vpc) => (vpc.0 as usize) < self.vpcs.len(),
            Verdict::AllowAmbiguous(set) => (set.0 as usize) < self.candidate_sets.len(),
            Verdict::Drop(_) => true,
        }
    }

    /// The verdict in the notation of the spec: `allow(vpc-2)`, `allow-ambiguous([vpc-a, vpc-c])`,
    /// `drop(source-not-exposed)`.
    pub fn verdict_text(&self, verdict: Verdict) -> String {
        match verdict {
            Verdict::Allow(vpc) => format!("allow({})", self.vpc(vpc).name),
            Verdict::AllowAmbiguous(set) => {
                format!(
                    "allow-ambiguous([{}])",
                    self.candidate_names(set).join(", ")
                )
            }
            Verdict::Drop(reason) => format!("drop({reason})"),
        }
    }

    /// The names of an ambiguous verdict's candidates, in name order.
    pub fn candidate_names(&self, id: CandidatesId) -> Vec<&str> {
        self.candidates(id)
            .iter()
            .map(|&v| self.vpc(v).name.as_str())
            .collect()
    }
}
