//! The JSON-lines packet and verdict format of the fixture cases and of `flowgate check`.
//!
//! A packet line:
//! `{"src_vpc": "vpc-1", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": "tcp", "src_port": 1234, "dst_port": 80}`.
//! `src_vni` (a number) may stand in place of `src_vpc`; `proto` is `tcp`, `udp`, `icmp`,
//! `icmpv6` or a protocol number; ports are given for TCP and UDP and absent otherwise. A
//! `note` string is allowed and ignored (fixtures explain their packets there).
//!
//! A verdict line: `{"verdict": "allow", "dst_vpc": "vpc-2", "dst_vni": 200}`,
//! `{"verdict": "allow-ambiguous", "candidates": ["vpc-a", "vpc-c"]}` or
//! `{"verdict": "drop", "reason": "source-not-exposed"}`.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::packet::{Packet, Ports, Verdict, proto};

/// A packet line or text that does not read as a packet, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The line is not JSON, or not an object of the packet line's fields.
    #[error("{0}")]
    Json(String),
    /// A field is missing, given twice, or out of range.
    #[error("{0}")]
    Field(String),
    /// The `VPC SRC[:PORT] -> DST[:PORT] PROTO` text does not read.
    #[error("{0}")]
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PacketLine {
    src_vpc: Option<String>,
    src_vni: Option<u32>,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    proto: Value,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    #[serde(rename = "note")]
    _note: Option<String>,
}

/// Reads one packet line. A `src_vpc` that names no VPC gives a packet with VNI 0, which no
/// VPC has, so it is judged `drop(unknown-vpc)`.
pub fn parse_packet(line: &str, catalog: &Catalog) -> Result<Packet, PacketError> {
    let p: PacketLine = serde_json::from_str(line).map_err(|e| PacketError::Json(e.to_string()))?;
    let src_vni = match (&p.src_vpc, p.src_vni) {
        (Some(name), None) => catalog
            .vpc_by_name(name)
            .map_or(0, |id| catalog.vpc(id).vni),
        (None, Some(vni)) => vni,
        (Some(_), Some(_)) => {
            return Err(PacketError::Field(
                "give `src_vpc` or `src_vni`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(PacketError::Field(
                "missing `src_vpc` (or `src_vni`)".into(),
            ));
        }
    };
    let proto = parse_proto(&p.proto)?;
    let ports = match (proto, p.src_port, p.dst_port) {
        (proto::TCP | proto::UDP, Some(src), Some(dst)) => Some(Ports { src, dst }),
        (proto::TCP | proto::UDP, _, _) => {
            return Err(PacketError::Field(
                "TCP and UDP packets need `src_port` and `dst_port`".into(),
            ));
        }
        (_, None, None) => None,
        (n, _, _) => {
            return Err(PacketError::Field(format!(
                "protocol {n} has no ports: leave out `src_port` and `dst_port`"
            )));
        }
    };
    Ok(Packet {
        src_vni,
        src: p.src_ip,
        dst: p.dst_ip,
        proto,
        ports,
    })
}

/// Reads a packet written for people, as `flowgate explain` takes it:
/// `vpc-1 10.0.0.5:1234 -> 1.0.0.9:80 tcp`, `vpc-1 fd00::1 -> fd00::2 icmpv6`,
/// `vpc-1 [fd00::1]:1234 -> [fd00::2]:53 udp`. The source VPC is a name, or `vni:N`.
pub fn parse_packet_text(text: &str, catalog: &Catalog) -> Result<Packet, PacketError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [vpc, src, "->", dst, proto_name] = words[..] else {
        return Err(PacketError::Text(format!(
            "`{text}` is not a packet: write `VPC SRC[:PORT] -> DST[:PORT] PROTO`, such as `vpc-1 10.0.0.5:1234 -> 1.0.0.9:80 tcp`"
        )));
    };
    let src_vni = match vpc.strip_prefix("vni:") {
        Some(n) => n
            .parse()
            .map_err(|_| PacketError::Text(format!("`{vpc}`: a VNI is a number, as in vni:100")))?,
        None => {
            let id = catalog.vpc_by_name(vpc).ok_or_else(|| {
                PacketError::Text(format!(
                    "no VPC is named `{vpc}` (write vni:N for a bare VNI)"
                ))
            })?;
            catalog.vpc(id).vni
        }
    };
    let proto = parse_proto(&Value::String(proto_name.to_owned()))?;
    let (src, src_port) = endpoint(src)?;
    let (dst, dst_port) = endpoint(dst)?;
    let ports = match (proto, src_port, dst_port) {
        (proto::TCP | proto::UDP, Some(src), Some(dst)) => Some(Ports { src, dst }),
        (proto::TCP | proto::UDP, _, _) => {
            return Err(PacketError::Text(format!(
                "{proto_name} needs ports on both ends, as in 10.0.0.5:1234"
            )));
        }
        (_, None, None) => None,
        _ => {
            return Err(PacketError::Text(format!(
                "{proto_name} has no ports: write bare addresses"
            )));
        }
    };
    Ok(Packet {
        src_vni,
        src,
        dst,
        proto,
        ports,
    })
}

/// `10.0.0.5:1234`, `10.0.0.5`, `[fd00::1]:53` or `fd00::1`.
fn endpoint(text: &str) -> Result<(IpAddr, Option<u16>), PacketError> {
    let bad = || {
        PacketError::Text(format!(
            "`{text}` is not an address, or an address and port"
        ))
    };
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    let (addr, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    Ok((
        addr.parse().map_err(|_| bad())?,
        Some(port.parse().map_err(|_| bad())?),
    ))
}

/// A protocol name (`tcp`, `udp`, `icmp`, `icmpv6`) or number.
pub fn parse_proto(value: &Value) -> Result<u8, PacketError> {
    let named = |name: &str| match name.to_ascii_lowercase().as_str() {
        "tcp" => Some(proto::TCP),
        "udp" => Some(proto::UDP),
        "icmp" => Some(proto::ICMP),
        "icmpv6" | "ipv6-icmp" => Some(proto::ICMPV6),
        other => other.parse().ok(),
    };
    match value {
        Value::String(name) => named(name),
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        _ => None,
    }
    .ok_or_else(|| {
        PacketError::Field(format!(
            "`proto` {value} is not tcp, udp, icmp, icmpv6 or a protocol number 0-255"
        ))
    })
}

/// An explanation of `packet`'s verdict as a JSON value (what `flowgate explain --json`
/// prints).
pub fn explanation_json(catalog: &Catalog, packet: &Packet, e: &crate::Explanation) -> Value {
    let matches = |ms: &[crate::explain::EntryMatch]| -> Vec<Value> {
        ms.iter()
            .map(|m| json!({"block": m.block, "entry": m.entry, "miss": m.miss}))
            .collect()
    };
    json!({
        "packet": packet_json(catalog, packet),
        "verdict": verdict_json(catalog, e.verdict),
        "src_vpc": e.src_vpc,
        "peerings": e.peerings.iter().map(|p| json!({
            "peering": p.peering,
            "remote": p.remote,
            "admits": p.admits,
            "source": matches(&p.source),
            "destination": matches(&p.destination),
        })).collect::<Vec<_>>(),
        "notes": e.notes,
    })
}

/// A packet as a JSON value, naming its source VPC when the catalog knows its VNI.
pub fn packet_json(catalog: &Catalog, packet: &Packet) -> Value {
    let proto: Value = match packet.proto {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        n => n.into(),
    };
    let mut line =
        json!({"src_ip": packet.src.to_string(), "dst_ip": packet.dst.to_string(), "proto": proto});
    match catalog.vpcs.iter().find(|v| v.vni == packet.src_vni) {
        Some(vpc) => line["src_vpc"] = vpc.name.clone().into(),
        None => line["src_vni"] = packet.src_vni.into(),
    }
    if let Some(ports) = packet.ports {
        line["src_port"] = ports.src.into();
        line["dst_port"] = ports.dst.into();
    }
    line
}

/// A verdict as a JSON value.
pub fn verdict_json(catalog: &Catalog, verdict: Verdict) -> Value {
    let kind = verdict.kind().as_str();
    match verdict {
        Verdict::Allow(vpc) => {
            let vpc = catalog.vpc(vpc);
            json!({"verdict": kind, "dst_vpc": vpc.name, "dst_vni": vpc.vni})
        }
        Verdict::AllowAmbiguous(set) => {
            json!({"verdict": kind, "candidates": catalog.candidate_names(set)})
        }
        Verdict::Drop(reason) => json!({"verdict": kind, "reason": reason.as_str()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Catalog {
        let yaml = "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 7}\n";
        crate::Table::build(&crate::parse(yaml, None).unwrap())
            .unwrap()
            .catalog()
            .clone()
    }

    #[test]
    fn reads_packets() {
        let t = table();
        let p = parse_packet(r#"{"src_vpc": "a", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": "tcp", "src_port": 1234, "dst_port": 80}"#, &t).unwrap();
        assert_eq!(
            p,
            Packet::tcp(
                7,
                "10.0.0.1".parse().unwrap(),
                1234,
                "1.0.0.9".parse().unwrap(),
                80
            )
        );
        let p = parse_packet(r#"{"src_vni": 9, "src_ip": "fd00::1", "dst_ip": "fd00::2", "proto": 58, "note": "ping"}"#, &t).unwrap();
        assert_eq!(
            p,
            Packet::portless(
                9,
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                58
            )
        );
        let p = parse_packet(
            r#"{"src_vpc": "nobody", "src_ip": "1.1.1.1", "dst_ip": "2.2.2.2", "proto": "ICMP"}"#,
            &t,
        )
        .unwrap();
        assert_eq!(p.src_vni, 0);
    }

    #[test]
    fn reads_packets_written_for_people() {
        let t = table();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let read = |s: &str| parse_packet_text(s, &t);
        assert_eq!(
            read("a 10.0.0.5:1234 -> 1.0.0.9:80 tcp"),
            Ok(Packet::tcp(7, ip("10.0.0.5"), 1234, ip("1.0.0.9"), 80))
        );
        assert_eq!(
            read("vni:9 [fd00::1]:53 -> [fd00::2]:5353 udp"),
            Ok(Packet::udp(9, ip("fd00::1"), 53, ip("fd00::2"), 5353))
        );
        assert_eq!(
            read("a fd00::1 -> fd00::2 icmpv6"),
            Ok(Packet::portless(
                7,
                ip("fd00::1"),
                ip("fd00::2"),
                proto::ICMPV6
            ))
        );
        for (text, says) in [
            ("b 10.0.0.5:1 -> 1.0.0.9:80 tcp", "no VPC is named `b`"),
            ("a 10.0.0.5 -> 1.0.0.9:80 tcp", "tcp needs ports"),
            ("a 10.0.0.5:1 -> 1.0.0.9:2 icmp", "icmp has no ports"),
            ("a 10.0.0.5:1 1.0.0.9:2 tcp", "is not a packet"),
            (
                "a 10.0.0.300:1 -> 1.0.0.9:2 tcp",
                "`10.0.0.300:1` is not an address",
            ),
            ("a 10.0.0.5:99999 -> 1.0.0.9:2 tcp", "is not an address"),
            ("vni:x 10.0.0.5 -> 1.0.0.9 icmp", "a VNI is a number"),
        ] {
            let e = read(text).unwrap_err();
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn packets_written_read_back_the_same() {
        let t = table();
        for p in [
            Packet::tcp(
                7,
                "10.0.0.1".parse().unwrap(),
                1,
                "1.0.0.9".parse().unwrap(),
                2,
            ),
            Packet::udp(
                99,
                "fd00::1".parse().unwrap(),
                53,
                "fd00::2".parse().unwrap(),
                53,
            ),
            Packet::portless(
                7,
                "10.0.0.1".parse().unwrap(),
                "1.0.0.9".parse().unwrap(),
                proto::ICMP,
            ),
            Packet::portless(
                7,
                "10.0.0.1".parse().unwrap(),
                "1.0.0.9".parse().unwrap(),
                47,
            ),
        ] {
            let line = packet_json(&t, &p).to_string();
            assert_eq!(parse_packet(&line, &t), Ok(p), "{line}");
        }
    }

    #[test]
    fn refuses_malformed_packets_with_a_reason() {
        let t = table();
        let cases = [
            (
                r#"{"src_vpc": "a", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": "tcp"}"#,
                "need `src_port`",
            ),
            (
                r#"{"src_vpc": "a", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": "icmp", "src_port": 1, "dst_port": 2}"#,
                "has no ports",
            ),
            (
                r#"{"src_vpc": "a", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": "sctp"}"#,
                "not tcp, udp",
            ),
            (
                r#"{"src_vpc": "a", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": 300}"#,
                "not tcp, udp",
            ),
            (
                r#"{"src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": 1}"#,
                "missing `src_vpc`",
            ),
            (
                r#"{"src_vpc": "a", "src_vni": 7, "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": 1}"#,
                "not both",
            ),
            (
                r#"{"src_vpc": "a", "src_ip": "10.0.0.300", "dst_ip": "1.0.0.9", "proto": 1}"#,
                "invalid IP address",
            ),
            (
                r#"{"src_vpc": "a", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": "tcp", "src_port": 70000, "dst_port": 1}"#,
                "invalid value",
            ),
            (
                r#"{"src_vpc": "a", "src_ip": "10.0.0.1", "dst_ip": "1.0.0.9", "proto": 1, "colour": 1}"#,
                "unknown field",
            ),
            ("not json", "expected"),
        ];
        for (line, words) in cases {
            let err = parse_packet(line, &t).unwrap_err();
            assert!(
                err.to_string().contains(words),
                "{line}: {err} should say {words}"
            );
        }
    }
}
