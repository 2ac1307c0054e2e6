//! What the policy is asked about (a packet's source VNI and 5-tuple) and what it answers.

use std::net::IpAddr;

/// IP protocol numbers the policy and its tools name.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// L4 source and destination ports, present for TCP and UDP only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ports {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

/// One packet as the flow filter sees it: the VNI of its source VPC and its 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// VNI the packet was encapsulated with: names its source VPC.
    pub src_vni: u32,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Ports, for TCP and UDP; `None` for every other protocol and for non-first fragments.
    pub ports: Option<Ports>,
}

impl Packet {
    /// A TCP packet.
    pub fn tcp(src_vni: u32, src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        let ports = Some(Ports {
            src: src_port,
            dst: dst_port,
        });
        Self {
            src_vni,
            src,
            dst,
            proto: proto::TCP,
            ports,
        }
    }

    /// A UDP packet.
    pub fn udp(src_vni: u32, src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        let ports = Some(Ports {
            src: src_port,
            dst: dst_port,
        });
        Self {
            src_vni,
            src,
            dst,
            proto: proto::UDP,
            ports,
        }
    }

    /// A packet without ports (ICMP, or any protocol other than TCP and UDP).
    pub fn portless(src_vni: u32, src: IpAddr, dst: IpAddr, proto: u8) -> Self {
        Self {
            src_vni,
            src,
            dst,
            proto,
            ports: None,
        }
    }
}

/// Index of a VPC in a [`Table`](crate::Table); VPCs are numbered in name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VpcId(pub u32);

/// Index of a set of candidate VPCs of an ambiguous verdict, in a [`Table`](crate::Table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CandidatesId(pub u32);

crate::labels! {
    /// Why a packet was dropped. The codes are the WIT `drop-reason`'s order and the drop
    /// values of the packed verdict word (`wit/policy.wit`, `judge-packed`).
    pub enum DropReason {
        /// The packet's source VNI names no VPC.
        UnknownVpc = 0 => "unknown-vpc",
        /// No peering of the source VPC offers the source address and port.
        SourceNotExposed = 1 => "source-not-exposed",
        /// The source is offered, but no peering admits the destination too.
        DestinationNotExposed = 2 => "destination-not-exposed",
        /// A module's own rule refused the packet, whatever the peerings say (a deny-list in
        /// front of the peering filter, for example). The peering filter itself never says it.
        Denied = 3 => "denied",
    }
}

/// The policy's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Exactly one peering admits the packet: forward it to this VPC.
    Allow(VpcId),
    /// Peerings with two or more VPCs admit it: allowed, the destination is left to a later,
    /// stateful stage. The candidates are in [`Table::candidates`](crate::Table::candidates).
    AllowAmbiguous(CandidatesId),
    /// Dropped.
    Drop(DropReason),
}

crate::labels! {
    /// The kind of a [`Verdict`], as verdict lines, counters and metrics name it.
    pub enum VerdictKind {
        /// [`Verdict::Allow`].
        Allow => "allow",
        /// [`Verdict::AllowAmbiguous`].
        AllowAmbiguous => "allow-ambiguous",
        /// [`Verdict::Drop`].
        Drop => "drop",
    }
}

impl Verdict {
    /// The verdict's kind.
    pub fn kind(self) -> VerdictKind {
        match self {
            Verdict::Allow(_) => VerdictKind::Allow,
            Verdict::AllowAmbiguous(_) => VerdictKind::AllowAmbiguous,
            Verdict::Drop(_) => VerdictKind::Drop,
        }
    }
}

impl Default for Verdict {
    /// Fail closed: a verdict slot nobody wrote drops its packet.
    fn default() -> Self {
        Verdict::Drop(DropReason::UnknownVpc)
    }
}
