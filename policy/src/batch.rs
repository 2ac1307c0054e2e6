//! The batch layout of `judge-packed` (documented byte for byte in `wit/policy.wit`): the
//! host encodes its packets into it and the guest reads them back, with one codec on both
//! sides.
//!
//! A batch crosses as columns of little-endian `u32` words, one word a packet in each: the
//! guest's lookup lanes take each field as it lies, with no per-byte decoding, and IPv4
//! addresses arrive as numbers, so a Wasm guest (which has no byte-swap instruction) never
//! swaps bytes. IPv6 addresses, the cold family, sit in a list after the columns.

use std::net::{IpAddr, Ipv6Addr};

use crate::packet::{Packet, Ports};

/// Bytes of one word of a batch.
const WORD: usize = 4;
/// Bytes of an IPv6 address in a batch's address list.
const V6_BYTES: usize = 16;

/// The columns of a batch, in order: word `column * n + i` of the columns is packet `i`'s.
pub(crate) mod column {
    /// Source VNI.
    pub const VNI: usize = 0;
    /// Protocol, ports flag and address families: the `shape` bits.
    pub const SHAPE: usize = 1;
    /// Source port in bits 0..16, destination port in bits 16..32.
    pub const PORTS: usize = 2;
    /// Source address: IPv4 as a number, or the index of an IPv6 address in the list.
    pub const SRC: usize = 3;
    /// Destination address, likewise.
    pub const DST: usize = 4;
    /// Columns in a batch.
    pub const COUNT: usize = 5;
}

/// Bits of a packet's shape word.
pub(crate) mod shape {
    /// The IP protocol number.
    pub const PROTO: u32 = 0xff;
    /// The packet has ports.
    pub const PORTS: u32 = 1 << 8;
    /// The source address is IPv6.
    pub const SRC_V6: u32 = 1 << 9;
    /// The destination address is IPv6.
    pub const DST_V6: u32 = 1 << 10;
    /// Either address is IPv6: the packet is not one for the IPv4 lanes.
    pub const V6: u32 = SRC_V6 | DST_V6;
}

/// The source and destination ports of a ports word.
#[inline(always)]
pub(crate) fn split_ports(word: u32) -> (u16, u16) {
    (word as u16, (word >> 16) as u16)
}

/// Replaces `out` with the batch of `packets` (at most `u32::MAX` of them: the count is a
/// word; no dataplane batch comes near).
///
/// On a gateway's traffic this loop waits on memory, not on its instructions: a branch-free
/// version without bounds checks measured the same, and fetching the next batch ahead gained
/// 2-3 % (`BENCHMARKS.md`, design decisions).
pub fn encode_packets(packets: &[Packet], out: &mut Vec<u8>) {
    let n = packets.len();
    let count = u32::try_from(n).unwrap_or(u32::MAX);
    out.clear();
    out.resize(WORD * (1 + column::COUNT * n), 0);
    let (header, columns) = out.split_at_mut(WORD);
    header.copy_from_slice(&count.to_le_bytes());
    let words = columns.as_chunks_mut::<WORD>().0;
    let (vni, rest) = words.split_at_mut(n);
    let (shapes, rest) = rest.split_at_mut(n);
    let (ports, rest) = rest.split_at_mut(n);
    let (src, dst) = rest.split_at_mut(n);
    let mut v6 = 0u32;
    let mut addr_word = |addr: IpAddr| match addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => {
            v6 += 1;
            v6 - 1
        }
    };
    for (i, p) in packets.iter().enumerate() {
        let (src_port, dst_port) = p.ports.map_or((0, 0), |p| (p.src, p.dst));
        vni[i] = p.src_vni.to_le_bytes();
        shapes[i] = shape_word(p).to_le_bytes();
        ports[i] = (u32::from(src_port) | u32::from(dst_port) << 16).to_le_bytes();
        src[i] = addr_word(p.src).to_le_bytes();
        dst[i] = addr_word(p.dst).to_le_bytes();
    }
    if v6 > 0 {
        for addr in packets.iter().flat_map(|p| [p.src, p.dst]) {
            if let IpAddr::V6(a) = addr {
                out.extend_from_slice(&a.octets());
            }
        }
    }
}

/// The shape word of a packet. Whether it has ports is a coin toss on mixed traffic: the flag
/// is computed, not branched on.
#[inline(always)]
fn shape_word(p: &Packet) -> u32 {
    u32::from(p.proto)
        | (u32::from(p.ports.is_some()) * shape::PORTS)
        | (u32::from(p.src.is_ipv6()) * shape::SRC_V6)
        | (u32::from(p.dst.is_ipv6()) * shape::DST_V6)
}

/// A batch whose layout has been checked: its packet count fits its length, and its address
/// list is whole.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Packets in the batch.
    n: usize,
    /// The five columns, `n` words each.
    columns: &'a [[u8; WORD]],
    /// The IPv6 address list.
    v6: &'a [[u8; V6_BYTES]],
}

impl<'a> Batch<'a> {
    /// Reads a batch's layout, or `None` when `bytes` does not follow it.
    pub fn parse(bytes: &'a [u8]) -> Option<Batch<'a>> {
        let (words, partial) = bytes.as_chunks::<WORD>();
        let (count, body) = words.split_first()?;
        let n = usize::try_from(u32::from_le_bytes(*count)).ok()?;
        let column_words = n.checked_mul(column::COUNT)?;
        if !partial.is_empty() || column_words > body.len() {
            return None;
        }
        let (columns, _) = body.split_at(column_words);
        let (v6, partial) = bytes[WORD * (1 + column_words)..].as_chunks::<V6_BYTES>();
        partial.is_empty().then_some(Batch { n, columns, v6 })
    }

    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the batch has no packets.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// One column's words, one a packet: the lane driver reads them as they lie.
    #[inline(always)]
    pub(crate) fn column(&self, column: usize) -> &'a [[u8; WORD]] {
        &self.columns[column * self.n..(column + 1) * self.n]
    }

    /// Packet `i`, or `None` when there is none or an IPv6 address of it is past the list.
    pub fn packet(&self, i: usize) -> Option<Packet> {
        let word = |column: usize| self.column(column).get(i).map(|w| u32::from_le_bytes(*w));
        let (shape, (src_port, dst_port)) =
            (word(column::SHAPE)?, split_ports(word(column::PORTS)?));
        let addr = |column: usize, v6: bool| -> Option<IpAddr> {
            let value = word(column)?;
            Some(if v6 {
                let at = usize::try_from(value).ok()?;
                IpAddr::V6(Ipv6Addr::from(*self.v6.get(at)?))
            } else {
                IpAddr::V4(value.into())
            })
        };
        Some(Packet {
            src_vni: word(column::VNI)?,
            src: addr(column::SRC, shape & shape::SRC_V6 != 0)?,
            dst: addr(column::DST, shape & shape::DST_V6 != 0)?,
            proto: (shape & shape::PROTO) as u8,
            ports: (shape & shape::PORTS != 0).then_some(Ports {
                src: src_port,
                dst: dst_port,
            }),
        })
    }

    /// The batch's packets, in order; `None` for one that [`Batch::packet`] refuses.
    pub fn packets(self) -> impl Iterator<Item = Option<Packet>> + 'a {
        (0..self.n).map(move |i| self.packet(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of a batch, read back.
    fn words(batch: &[u8]) -> Vec<u32> {
        let (words, partial) = batch.as_chunks::<4>();
        assert!(partial.is_empty());
        words.iter().map(|w| u32::from_le_bytes(*w)).collect()
    }

    #[test]
    fn batches_follow_the_documented_layout_and_round_trip() {
        let packets = [
            Packet::tcp(
                0x0102_0304,
                "10.0.0.1".parse().unwrap(),
                0x1234,
                "1.0.0.9".parse().unwrap(),
                80,
            ),
            Packet::portless(
                7,
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                58,
            ),
            // Each address carries its own family.
            Packet::portless(
                8,
                "10.0.0.1".parse().unwrap(),
                "fd00::3".parse().unwrap(),
                1,
            ),
        ];
        // Whatever the buffer held is replaced.
        let mut buf = vec![0xff; 500];
        encode_packets(&packets, &mut buf);
        let w = words(&buf[..4 * 16]);
        assert_eq!(w[0], 3, "the packet count");
        assert_eq!(&w[1..4], &[0x0102_0304, 7, 8], "the VNIs");
        // TCP with ports; ICMPv6 with both addresses IPv6; ICMP from IPv4 to IPv6.
        assert_eq!(&w[4..7], &[6 | 1 << 8, 58 | 1 << 9 | 1 << 10, 1 | 1 << 10]);
        assert_eq!(&w[7..10], &[0x1234 | 80 << 16, 0, 0], "the ports");
        // IPv4 addresses as numbers; IPv6 ones as their place in the address list.
        assert_eq!(&w[10..13], &[0x0a00_0001, 0, 0x0a00_0001], "the sources");
        assert_eq!(&w[13..16], &[0x0100_0009, 1, 2], "the destinations");
        assert_eq!(buf.len(), 4 * 16 + 3 * 16);
        let list: Vec<Ipv6Addr> = buf[4 * 16..]
            .as_chunks::<16>()
            .0
            .iter()
            .map(|a| Ipv6Addr::from(*a))
            .collect();
        let want: Vec<Ipv6Addr> = ["fd00::1", "fd00::2", "fd00::3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(list, want);

        let batch = Batch::parse(&buf).expect("a batch as encoded");
        assert_eq!(batch.len(), 3);
        let decoded: Vec<Option<Packet>> = batch.packets().collect();
        assert_eq!(decoded, packets.map(Some));
        assert_eq!(batch.packet(3), None);

        encode_packets(&[], &mut buf);
        assert_eq!(buf, [0; 4]);
        assert!(Batch::parse(&buf).is_some_and(|b| b.is_empty()));
    }
}
