//! Every conversion between the generated WIT types and the policy library's, on the host
//! side, in one place.

use flowgate_policy::explain::{EntryMatch, Explanation, PeeringMatch};
use flowgate_policy::{
    CandidatesId, Catalog, ConfigError, DropReason, Packet, Verdict, VpcEntry, VpcId,
};

use super::bindings;

pub(crate) fn to_wit_packet(p: &Packet) -> bindings::Packet {
    let address = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => {
            let [b0, b1, b2, b3] = a.octets();
            bindings::IpAddress::V4((b0, b1, b2, b3))
        }
        std::net::IpAddr::V6(a) => {
            let [s0, s1, s2, s3, s4, s5, s6, s7] = a.segments();
            bindings::IpAddress::V6((s0, s1, s2, s3, s4, s5, s6, s7))
        }
    };
    bindings::Packet {
        src_vni: p.src_vni,
        src: address(p.src),
        dst: address(p.dst),
        proto: p.proto,
        ports: p.ports.map(|ports| bindings::Ports {
            src: ports.src,
            dst: ports.dst,
        }),
    }
}

pub(crate) fn from_wit_verdict(v: bindings::Verdict) -> Verdict {
    match v {
        bindings::Verdict::Allow(vpc) => Verdict::Allow(VpcId(vpc)),
        bindings::Verdict::AllowAmbiguous(set) => Verdict::AllowAmbiguous(CandidatesId(set)),
        bindings::Verdict::Drop(reason) => Verdict::Drop(match reason {
            bindings::DropReason::UnknownVpc => DropReason::UnknownVpc,
            bindings::DropReason::SourceNotExposed => DropReason::SourceNotExposed,
            bindings::DropReason::DestinationNotExposed => DropReason::DestinationNotExposed,
            bindings::DropReason::Denied => DropReason::Denied,
        }),
    }
}

/// The names behind a module's verdicts, from what it said of its configuration.
pub(crate) fn catalog(summary: &bindings::ConfigSummary) -> Catalog {
    Catalog {
        vpcs: summary
            .vpcs
            .iter()
            .map(|v| VpcEntry {
                name: v.name.clone(),
                vni: v.vni,
            })
            .collect(),
        candidate_sets: summary
            .candidate_sets
            .iter()
            .map(|set| set.iter().copied().map(VpcId).collect())
            .collect(),
    }
}

/// A module's explanation.
pub(crate) fn explanation(e: bindings::Explanation) -> Explanation {
    let matches = |ms: Vec<bindings::EntryMatch>| -> Vec<EntryMatch> {
        ms.into_iter()
            .map(|m| EntryMatch {
                block: m.block,
                entry: m.entry,
                miss: m.miss,
            })
            .collect()
    };
    Explanation {
        verdict: from_wit_verdict(e.verdict),
        src_vpc: e.src_vpc,
        peerings: e
            .peerings
            .into_iter()
            .map(|p| PeeringMatch {
                peering: p.peering,
                remote: p.remote,
                source: matches(p.source),
                destination: matches(p.destination),
                admits: p.admits,
            })
            .collect(),
        notes: e.notes,
    }
}

/// A module's refusal of a configuration, as the library's own error type.
pub(crate) fn config_error(e: bindings::ConfigError) -> ConfigError {
    ConfigError {
        file: None,
        document: e.document.map(|d| d as usize),
        object: e.object,
        field: e.field,
        value: e.value,
        message: e.message,
    }
}
