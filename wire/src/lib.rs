//! Frames on the wire, for flowgate's dataplane: VXLAN (RFC 7348) over IPv4 or IPv6, and the
//! packet inside it read into the 5-tuple the policy judges; and the VNI rewritten when an
//! allowed packet is forwarded to its destination VPC.
//!
//! Headers are read with `etherparse`: Ethernet II, 802.1Q / 802.1ad tags, IPv4 with options,
//! IPv6 with its extension headers (hop-by-hop, routing, fragment, destination options), TCP,
//! UDP, ICMP and ICMPv6. A fragment other than the first has no ports; the first fragment of a
//! TCP or UDP packet has them in its first four bytes.
//!
//! Every input is untrusted: any byte string gives a [`Frame`] or a [`FrameError`] with a
//! reason the dataplane counts, never a panic (`fuzz/` holds the fuzz target).

use std::net::IpAddr;

use etherparse::LenSource;
use etherparse::err::packet::SliceError;
use etherparse::{IpNumber, Ipv6ExtensionSlice, NetSlice, SlicedPacket, TransportSlice};
use flowgate_policy::{Packet, Ports};

/// The IANA UDP port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes of a VXLAN header.
pub const VXLAN_HEADER: usize = 8;
/// The VXLAN flag that says the VNI is valid (the "I" bit).
const FLAG_VNI: u8 = 0x08;

/// Where the fields of a VXLAN header lie (RFC 7348, section 5).
mod field {
    use std::ops::Range;

    /// Flags: [`super::FLAG_VNI`].
    pub const FLAGS: usize = 0;
    /// The VNI, 24 bits big-endian.
    pub const VNI: Range<usize> = 4..7;
    /// The VNI with the reserved byte after it: the two 16-bit words of the UDP checksum a
    /// VNI rewrite changes.
    pub const VNI_WORDS: Range<usize> = 4..8;
}

/// A VXLAN header carrying `vni` (the I flag set, the reserved bits zero).
pub fn vxlan_header(vni: u32) -> [u8; VXLAN_HEADER] {
    let mut header = [0u8; VXLAN_HEADER];
    header[field::FLAGS] = FLAG_VNI;
    header[field::VNI].copy_from_slice(&vni.to_be_bytes()[1..]);
    header
}

/// The VNI of a VXLAN header.
fn header_vni(header: &[u8; VXLAN_HEADER]) -> u32 {
    let mut word = [0u8; 4];
    word[1..].copy_from_slice(&header[field::VNI]);
    u32::from_be_bytes(word)
}

flowgate_policy::labels! {
    /// The kinds of [`FrameError`]: the dataplane's drop reasons for frames that do not reach
    /// the policy, counted under these names.
    pub enum FrameFault {
        /// Neither IPv4 nor IPv6 inside.
        NotIp => "not-ip",
        /// The frame ends before the headers it announces.
        Truncated => "truncated",
        /// A header that breaks its protocol's rules.
        Malformed => "malformed",
        /// Not VXLAN, and no source VPC was given for such frames.
        NoVni => "no-vni",
    }
}

/// Why a frame does not reach the policy. [`FrameError::reason`] names the dataplane's drop
/// reason for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Neither IPv4 nor IPv6 inside (ARP, another EtherType, or no Ethernet at all).
    #[error("not an IP packet: {0}")]
    NotIp(String),
    /// The frame ends before the headers it announces.
    #[error("truncated: {0}")]
    Truncated(String),
    /// A header that breaks its protocol's rules.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Not VXLAN, and no source VPC was given for such frames (see [`parse_frame`]'s
    /// `default_vni`).
    #[error("not VXLAN, and nothing says which VPC it comes from")]
    NoVni,
}

impl FrameError {
    /// The drop reason.
    pub fn reason(&self) -> FrameFault {
        match self {
            FrameError::NotIp(_) => FrameFault::NotIp,
            FrameError::Truncated(_) => FrameFault::Truncated,
            FrameError::Malformed(_) => FrameFault::Malformed,
            FrameError::NoVni => FrameFault::NoVni,
        }
    }
}

/// Where a frame's VXLAN header sits, to rewrite its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    /// The VNI the frame arrived with.
    pub vni: u32,
    /// Offset of the VXLAN header in the bytes parsed.
    pub header_at: usize,
    /// Offset of the outer UDP checksum, when the frame has a non-zero one to keep right.
    pub udp_checksum_at: Option<usize>,
}

/// A frame read for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The 5-tuple and source VNI.
    pub packet: Packet,
    /// The VXLAN header, when the frame was encapsulated.
    pub vxlan: Option<Vxlan>,
}

fn slice_error(e: SliceError, what: &str) -> FrameError {
    match e {
        SliceError::Len(len) if len.len_source == LenSource::Slice => {
            FrameError::Truncated(format!("{what}: {len}"))
        }
        other => FrameError::Malformed(format!("{what}: {other}")),
    }
}

/// Offset of `part` within `whole` (`part` must be a sub-slice of `whole`).
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

/// Reads an Ethernet frame as captured at a gateway: VXLAN to UDP port 4789 over IPv4 or
/// IPv6, whose VNI names the source VPC; any other frame is itself the packet, from the VPC
/// of `default_vni` (an error without one).
pub fn parse_frame(frame: &[u8], default_vni: Option<u32>) -> Result<Frame, FrameError> {
    let outer = SlicedPacket::from_ethernet(frame).map_err(|e| slice_error(e, "outer frame"))?;
    if let Some(TransportSlice::Udp(udp)) = &outer.transport
        && udp.destination_port() == VXLAN_PORT
    {
        let payload = udp.payload();
        let at = offset_in(frame, payload);
        let (packet, vni) = parse_vxlan(payload)?;
        let checksum = udp.checksum();
        return Ok(Frame {
            packet,
            vxlan: Some(Vxlan {
                vni,
                header_at: at,
                udp_checksum_at: (checksum != 0).then(|| at - 2),
            }),
        });
    }
    // Not VXLAN: the frame is the packet. What is wrong with it comes before the missing VNI.
    let packet = inner_packet(&outer, default_vni.unwrap_or_default())?;
    let vni = default_vni.ok_or(FrameError::NoVni)?;
    Ok(Frame {
        packet: Packet {
            src_vni: vni,
            ..packet
        },
        vxlan: None,
    })
}

/// Reads a VXLAN datagram's payload (the VXLAN header, then the inner Ethernet frame), as a
/// UDP socket receives it. Returns the inner packet and the VNI.
pub fn parse_vxlan(payload: &[u8]) -> Result<(Packet, u32), FrameError> {
    let Some((header, inner)) = payload.split_first_chunk::<VXLAN_HEADER>() else {
        return Err(FrameError::Truncated(format!(
            "VXLAN header needs {VXLAN_HEADER} bytes, the datagram has {}",
            payload.len()
        )));
    };
    if header[field::FLAGS] & FLAG_VNI == 0 {
        return Err(FrameError::Malformed(
            "VXLAN header without the I flag: no valid VNI".into(),
        ));
    }
    let vni = header_vni(header);
    let sliced = SlicedPacket::from_ethernet(inner).map_err(|e| slice_error(e, "inner frame"))?;
    Ok((inner_packet(&sliced, vni)?, vni))
}

/// The 5-tuple of a sliced frame.
fn inner_packet(sliced: &SlicedPacket<'_>, vni: u32) -> Result<Packet, FrameError> {
    let (src, dst, payload, first_fragment) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                ip.payload(),
                h.fragments_offset().value() == 0,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let first = ip.extensions().clone().into_iter().all(|ext| match ext {
                Ipv6ExtensionSlice::Fragment(f) => f.fragment_offset().value() == 0,
                _ => true,
            });
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                ip.payload(),
                first,
            )
        }
        Some(NetSlice::Arp(_)) => return Err(FrameError::NotIp("ARP".into())),
        None => {
            let what = match &sliced.link {
                Some(etherparse::LinkSlice::Ethernet2(eth)) => {
                    format!("EtherType {:#06x}", eth.ether_type().0)
                }
                _ => "no Ethernet II header".into(),
            };
            return Err(FrameError::NotIp(what));
        }
    };
    let proto = payload.ip_number;
    let ports = match (&sliced.transport, proto) {
        (Some(TransportSlice::Tcp(t)), _) => Some(Ports {
            src: t.source_port(),
            dst: t.destination_port(),
        }),
        (Some(TransportSlice::Udp(u)), _) => Some(Ports {
            src: u.source_port(),
            dst: u.destination_port(),
        }),
        // The first fragment of a fragmented TCP or UDP packet carries the ports in its first
        // four bytes; later fragments carry none.
        (None, IpNumber::TCP | IpNumber::UDP) if payload.fragmented && first_fragment => {
            match payload.payload {
                [a, b, c, d, ..] => Some(Ports {
                    src: u16::from_be_bytes([*a, *b]),
                    dst: u16::from_be_bytes([*c, *d]),
                }),
                _ => {
                    return Err(FrameError::Truncated(
                        "first fragment shorter than its ports".into(),
                    ));
                }
            }
        }
        (None, IpNumber::TCP | IpNumber::UDP) if !payload.fragmented => {
            return Err(FrameError::Truncated(format!(
                "{} header missing",
                if proto == IpNumber::TCP { "TCP" } else { "UDP" }
            )));
        }
        _ => None,
    };
    Ok(Packet {
        src_vni: vni,
        src,
        dst,
        proto: proto.0,
        ports,
    })
}

/// Rewrites the VNI of the VXLAN header at `vxlan.header_at` in `bytes` (the bytes
/// [`parse_frame`] read) and keeps a non-zero outer UDP checksum right (RFC 1624's
/// incremental update).
pub fn set_vni(bytes: &mut [u8], vxlan: &Vxlan, vni: u32) {
    let at = vxlan.header_at;
    let Some(words) = bytes.get_mut(at + field::VNI_WORDS.start..at + field::VNI_WORDS.end) else {
        return;
    };
    let old = [
        u16::from_be_bytes([words[0], words[1]]),
        u16::from_be_bytes([words[2], words[3]]),
    ];
    words[..field::VNI.len()].copy_from_slice(&vxlan_header(vni)[field::VNI]);
    let new = [
        u16::from_be_bytes([words[0], words[1]]),
        u16::from_be_bytes([words[2], words[3]]),
    ];
    if let Some(sum_at) = vxlan.udp_checksum_at
        && let Some(sum) = bytes.get_mut(sum_at..sum_at + 2)
    {
        // HC' = ~(~HC + ~m + m'), in one's complement arithmetic, per changed word.
        let mut acc = u32::from(!u16::from_be_bytes([sum[0], sum[1]]));
        for (m, m2) in old.into_iter().zip(new) {
            acc += u32::from(!m) + u32::from(m2);
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        let mut updated = !(acc as u16);
        if updated == 0 {
            updated = 0xffff; // zero means "no checksum" in UDP
        }
        sum.copy_from_slice(&updated.to_be_bytes());
    }
}

/// Rewrites the VNI of a VXLAN datagram payload in place (the live gateway's forwarding).
pub fn set_payload_vni(payload: &mut [u8], vni: u32) {
    let vxlan = Vxlan {
        vni: 0,
        header_at: 0,
        udp_checksum_at: None,
    };
    set_vni(payload, &vxlan, vni);
}

/// A VXLAN datagram payload carrying `packet` (the VXLAN header with its source VNI, then an
/// Ethernet frame with the IP and TCP, UDP or ICMP echo headers the packet's 5-tuple needs,
/// then `payload`), as a VTEP would send it; `None` for a packet no real frame can carry
/// (mixed address families, ports on a protocol without them). For tests, benchmarks and
/// traffic generators.
pub fn vxlan_datagram(packet: &Packet, payload: &[u8]) -> Option<Vec<u8>> {
    use etherparse::PacketBuilder;
    let mut out = vxlan_header(packet.src_vni).to_vec();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2]);
    let ip = match (packet.src, packet.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => return None,
    };
    let written = match (packet.proto, packet.ports, packet.src.is_ipv4()) {
        (6, Some(p), _) => ip.tcp(p.src, p.dst, 1, 1024).write(&mut out, payload),
        (17, Some(p), _) => ip.udp(p.src, p.dst).write(&mut out, payload),
        (1, None, true) => ip.icmpv4_echo_request(1, 1).write(&mut out, payload),
        (58, None, false) => ip.icmpv6_echo_request(1, 1).write(&mut out, payload),
        (proto, None, _) if proto != 6 && proto != 17 => {
            ip.write(&mut out, IpNumber(proto), payload)
        }
        _ => return None,
    };
    written.ok().map(|()| out)
}

/// A whole captured frame (Ethernet, IPv4 192.0.2.1 to 192.0.2.2, UDP to port 4789) around
/// [`vxlan_datagram`]'s payload, with a zero UDP checksum as RFC 7348 recommends.
pub fn vxlan_frame(packet: &Packet, payload: &[u8]) -> Option<Vec<u8>> {
    use etherparse::PacketBuilder;
    let inner = vxlan_datagram(packet, payload)?;
    let mut out = Vec::with_capacity(inner.len() + 42);
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
        .udp(49152, VXLAN_PORT)
        .write(&mut out, &inner)
        .ok()?;
    // The outer UDP checksum: after the Ethernet (14) and IPv4 (20) headers, at UDP offset 6.
    const UDP_CHECKSUM: std::ops::Range<usize> = 14 + 20 + 6..14 + 20 + 8;
    out[UDP_CHECKSUM].copy_from_slice(&[0, 0]);
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use etherparse::{PacketBuilder, UdpHeader};

    /// An inner Ethernet frame: 10.0.0.1:1234 -> 10.0.0.2:80 over TCP.
    fn inner() -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1234, 80, 1, 1024);
        let mut out = Vec::new();
        builder.write(&mut out, b"hello").unwrap();
        out
    }

    fn vxlan_payload(vni: u32) -> Vec<u8> {
        let mut payload = vxlan_header(vni).to_vec();
        payload.extend(inner());
        payload
    }

    #[test]
    fn the_vxlan_header_in_golden_bytes() {
        // RFC 7348: flags 0x08 (I), 24 reserved bits, the VNI, 8 reserved bits.
        assert_eq!(
            vxlan_header(0x12_3456),
            [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]
        );
        assert_eq!(
            header_vni(&[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0x99]),
            0xab_cdef
        );
    }

    /// A VXLAN frame over IPv4 or IPv6 with a computed outer UDP checksum.
    fn test_frame(v6: bool, vni: u32) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let builder = if v6 {
            eth.ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
        } else {
            eth.ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
        };
        let mut out = Vec::new();
        builder
            .udp(49152, VXLAN_PORT)
            .write(&mut out, &vxlan_payload(vni))
            .unwrap();
        out
    }

    /// The outer UDP checksum as it should be for the frame's current bytes.
    fn recomputed_checksum(frame: &[u8]) -> u16 {
        let sliced = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("no UDP")
        };
        let header = UdpHeader::from_slice(udp.slice()).unwrap().0;
        match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => header
                .calc_checksum_ipv4_raw(
                    ip.header().source(),
                    ip.header().destination(),
                    udp.payload(),
                )
                .unwrap(),
            Some(NetSlice::Ipv6(ip)) => header
                .calc_checksum_ipv6_raw(
                    ip.header().source(),
                    ip.header().destination(),
                    udp.payload(),
                )
                .unwrap(),
            _ => panic!("no IP"),
        }
    }

    #[test]
    fn reads_the_inner_packet_and_the_vni() {
        for v6 in [false, true] {
            let frame = test_frame(v6, 0x00_1234);
            let parsed = parse_frame(&frame, None).unwrap();
            assert_eq!(
                parsed.packet,
                Packet::tcp(
                    0x1234,
                    "10.0.0.1".parse().unwrap(),
                    1234,
                    "10.0.0.2".parse().unwrap(),
                    80
                )
            );
            let vxlan = parsed.vxlan.unwrap();
            assert_eq!(vxlan.vni, 0x1234);
            assert_eq!(vxlan.header_at, if v6 { 14 + 40 + 8 } else { 14 + 20 + 8 });
        }
    }

    #[test]
    fn rewriting_the_vni_keeps_the_udp_checksum_right() {
        for v6 in [false, true] {
            for (from, to) in [
                (0x1234, 0x00ab_cdef),
                (1, 0xff_ffff),
                (0xff_ffff, 0),
                (7, 7),
            ] {
                let mut frame = test_frame(v6, from);
                let vxlan = parse_frame(&frame, None).unwrap().vxlan.unwrap();
                let at = vxlan.udp_checksum_at.expect("etherparse writes a checksum");
                set_vni(&mut frame, &vxlan, to);
                assert_eq!(parse_frame(&frame, None).unwrap().packet.src_vni, to);
                let stored = u16::from_be_bytes([frame[at], frame[at + 1]]);
                let want = match recomputed_checksum(&frame) {
                    0 => 0xffff,
                    sum => sum,
                };
                assert_eq!(stored, want, "v6 {v6}, {from:#x} -> {to:#x}");
            }
        }
    }

    #[test]
    fn built_datagrams_and_frames_read_back_as_their_packet() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for p in [
            Packet::tcp(5, ip("10.0.0.1"), 1, ip("10.0.0.2"), 2),
            Packet::udp(6, ip("fd00::1"), 53, ip("fd00::2"), 5353),
            Packet::portless(7, ip("10.0.0.1"), ip("10.0.0.2"), 1),
            Packet::portless(8, ip("fd00::1"), ip("fd00::2"), 58),
            Packet::portless(9, ip("10.0.0.1"), ip("10.0.0.2"), 47),
        ] {
            let datagram = vxlan_datagram(&p, b"x").unwrap();
            assert_eq!(parse_vxlan(&datagram).unwrap(), (p, p.src_vni));
            let frame = vxlan_frame(&p, b"x").unwrap();
            assert_eq!(parse_frame(&frame, None).unwrap().packet, p);
        }
        let mixed = Packet::tcp(1, ip("10.0.0.1"), 1, ip("fd00::1"), 2);
        assert_eq!(vxlan_datagram(&mixed, b""), None);
    }

    #[test]
    fn a_zero_checksum_stays_zero() {
        let mut frame = test_frame(false, 5);
        let at = 14 + 20 + 6;
        frame[at..at + 2].copy_from_slice(&[0, 0]);
        let vxlan = parse_frame(&frame, None).unwrap().vxlan.unwrap();
        assert_eq!(vxlan.udp_checksum_at, None);
        set_vni(&mut frame, &vxlan, 9);
        assert_eq!(&frame[at..at + 2], &[0, 0]);
    }

    #[test]
    fn datagram_payloads_and_their_errors() {
        let mut payload = vxlan_payload(42);
        assert_eq!(parse_vxlan(&payload).unwrap().1, 42);
        set_payload_vni(&mut payload, 77);
        assert_eq!(
            parse_vxlan(&payload).unwrap(),
            (
                Packet {
                    src_vni: 77,
                    ..parse_vxlan(&payload).unwrap().0
                },
                77
            )
        );
        assert_eq!(
            parse_vxlan(&payload[..5]).unwrap_err().reason(),
            "truncated"
        );
        let mut no_flag = payload.clone();
        no_flag[0] = 0;
        assert_eq!(parse_vxlan(&no_flag).unwrap_err().reason(), "malformed");
        // Cut in the inner TCP header: truncated, not a packet without ports.
        let cut = &payload[..8 + 14 + 20 + 10];
        assert_eq!(parse_vxlan(cut).unwrap_err().reason(), "truncated");
        // A frame outside VXLAN needs a VNI from elsewhere.
        let plain = inner();
        let no_vni = parse_frame(&plain, None).unwrap_err();
        assert_eq!(no_vni, FrameError::NoVni);
        assert_eq!(no_vni.reason(), "no-vni");
        assert_eq!(parse_frame(&plain, Some(3)).unwrap().packet.src_vni, 3);
    }
}
