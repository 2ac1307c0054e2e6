//! Every conversion between the WIT types and the policy library's, in one place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowgate_policy::{Config, DropReason, Table};

use crate::bindings::flowgate::policy::types as wit;

pub fn packet(p: wit::Packet) -> flowgate_policy::Packet {
    flowgate_policy::Packet {
        src_vni: p.src_vni,
        src: address(p.src),
        dst: address(p.dst),
        proto: p.proto,
        ports: p.ports.map(|ports| flowgate_policy::Ports {
            src: ports.src,
            dst: ports.dst,
        }),
    }
}

fn address(a: wit::IpAddress) -> IpAddr {
    match a {
        wit::IpAddress::V4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        wit::IpAddress::V6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}

pub fn verdict(v: flowgate_policy::Verdict) -> wit::Verdict {
    match v {
        flowgate_policy::Verdict::Allow(vpc) => wit::Verdict::Allow(vpc.0),
        flowgate_policy::Verdict::AllowAmbiguous(set) => wit::Verdict::AllowAmbiguous(set.0),
        flowgate_policy::Verdict::Drop(reason) => wit::Verdict::Drop(match reason {
            DropReason::UnknownVpc => wit::DropReason::UnknownVpc,
            DropReason::SourceNotExposed => wit::DropReason::SourceNotExposed,
            DropReason::DestinationNotExposed => wit::DropReason::DestinationNotExposed,
            DropReason::Denied => wit::DropReason::Denied,
        }),
    }
}

pub fn summary(config: &Config, table: &Table) -> wit::ConfigSummary {
    let catalog = table.catalog();
    wit::ConfigSummary {
        vpcs: catalog
            .vpcs
            .iter()
            .map(|v| wit::Vpc {
                name: v.name.clone(),
                vni: v.vni,
            })
            .collect(),
        peerings: config.peerings.len() as u32,
        candidate_sets: catalog
            .candidate_sets
            .iter()
            .map(|set| set.iter().map(|v| v.0).collect())
            .collect(),
        notices: config.notices.clone(),
    }
}

pub fn config_error(e: flowgate_policy::ConfigError) -> wit::ConfigError {
    wit::ConfigError {
        document: e.document.and_then(|d| u32::try_from(d).ok()),
        object: e.object,
        field: e.field,
        value: e.value,
        message: e.message,
    }
}

pub fn explanation(e: flowgate_policy::Explanation) -> wit::Explanation {
    let matches = |ms: Vec<flowgate_policy::explain::EntryMatch>| {
        ms.into_iter()
            .map(|m| wit::EntryMatch {
                block: m.block,
                entry: m.entry,
                miss: m.miss,
            })
            .collect()
    };
    wit::Explanation {
        verdict: verdict(e.verdict),
        src_vpc: e.src_vpc,
        peerings: e
            .peerings
            .into_iter()
            .map(|p| wit::PeeringMatch {
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
