//! The batch layout of `judge-packed` (documented byte for byte in `wit/policy.wit`): the
//! host encodes its packets into it and the guest reads them back, with one codec on both
//! sides.
//!
//! A batch crosses as columns of little-endian `u32` words, one word a packet in each: the
//! guest's lookup lanes take each field as it lies, with no per-byte decoding, and IPv4
//! addresses arrive as numbers, so a Wasm guest (which has no byte-swap instruction) never
//! swaps bytes. IPv6 addresses sit in a list after the columns, in network order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// Replaces `out` with the batch of `packets` ([`Columns::encode`] into `out`'s buffer). A
/// slice longer than [`Columns::MAX_PACKETS`] gives an empty `out`, which is no batch.
pub fn encode_packets(packets: &[Packet], out: &mut Vec<u8>) {
    let mut columns = Columns::from_buffer(std::mem::take(out));
    if columns.encode(packets).is_err() {
        columns.bytes.clear();
    }
    *out = columns.bytes;
}

/// Why a [`Columns`] refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ColumnsError {
    /// More packets than a batch holds ([`Columns::MAX_PACKETS`]).
    #[error("{n} packets is more than a batch holds ({max})", max = Columns::MAX_PACKETS)]
    TooMany {
        /// Packets asked for.
        n: usize,
    },
    /// A slot past the batch's packets.
    #[error("no slot {i} in a batch of {n} packets")]
    NoSlot {
        /// The slot.
        i: usize,
        /// Packets in the batch.
        n: usize,
    },
}

/// A batch in the `judge-packed` layout, written in place by a dataplane's decoder: sized
/// for `n` packets up front ([`Columns::begin`]), then each packet's slot set in any order
/// ([`Columns::set_v4`], [`Columns::set`]), IPv6 addresses appended to the address list as
/// they come. [`Columns::as_bytes`] is the batch as the guest reads it: for packets set in
/// order, the bytes [`encode_packets`] gives.
///
/// The buffer is kept across bursts: `begin` reallocates only for a burst larger than any
/// before. It clears the VNI and shape columns (8 bytes a packet) and leaves the rest as the
/// last burst wrote it, so a slot left unset is a packet of VNI 0, from IPv4 to IPv4 with no
/// ports: no VPC has VNI 0, and such a packet is `drop(unknown-vpc)`, never a previous
/// burst's packet. A slot set twice keeps the second packet (an IPv6 address of the first
/// stays in the list, unused).
#[derive(Debug, Clone)]
pub struct Columns {
    /// The packet count, the five columns, then the IPv6 address list.
    bytes: Vec<u8>,
    /// Packets in the batch.
    n: usize,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            bytes: vec![0; WORD],
            n: 0,
        }
    }
}

impl Columns {
    /// Packets a batch holds at most: 2^24, 320 MiB of columns, past any guest's memory.
    pub const MAX_PACKETS: usize = 1 << 24;

    /// An empty batch, with room for `n` packets before it reallocates.
    pub fn with_capacity(n: usize) -> Columns {
        let mut bytes = Vec::with_capacity(columns_end(n.min(Self::MAX_PACKETS)));
        bytes.extend_from_slice(&[0; WORD]);
        Columns { bytes, n: 0 }
    }

    /// A batch of `n` unset packets ([`Columns::begin`]).
    pub fn with_len(n: usize) -> Result<Columns, ColumnsError> {
        let mut columns = Columns::with_capacity(n);
        columns.begin(n)?;
        Ok(columns)
    }

    /// An empty batch in `buffer`'s allocation.
    fn from_buffer(mut bytes: Vec<u8>) -> Columns {
        bytes.clear();
        bytes.extend_from_slice(&[0; WORD]);
        Columns { bytes, n: 0 }
    }

    /// Starts a batch of `n` packets, every slot unset (a packet of VNI 0 from 0.0.0.0 to
    /// 0.0.0.0 with no ports, which the peering filter judges `drop(unknown-vpc)`), the address
    /// list empty.
    pub fn begin(&mut self, n: usize) -> Result<(), ColumnsError> {
        if n > Self::MAX_PACKETS {
            return Err(ColumnsError::TooMany { n });
        }
        let end = columns_end(n);
        self.bytes.truncate(end);
        self.bytes.resize(end, 0);
        let count = u32::try_from(n).map_err(|_| ColumnsError::TooMany { n })?;
        self.bytes[..WORD].copy_from_slice(&count.to_le_bytes());
        // Every column: an unset slot is VNI 0, IPv4 0.0.0.0 to 0.0.0.0 with no ports, never
        // a field of an earlier burst's packet.
        self.bytes[WORD..end].fill(0);
        self.n = n;
        Ok(())
    }

    /// Replaces the batch with `packets`, in order: the columns split once, so that no write
    /// checks its slot as [`Columns::set`] does.
    pub fn encode(&mut self, packets: &[Packet]) -> Result<(), ColumnsError> {
        let n = packets.len();
        let count = u32::try_from(n)
            .ok()
            .filter(|_| n <= Self::MAX_PACKETS)
            .ok_or(ColumnsError::TooMany { n })?;
        let end = columns_end(n);
        self.bytes.clear();
        self.bytes.resize(end, 0);
        self.n = n;
        let (header, columns) = self.bytes.split_at_mut(WORD);
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
                v6 = v6.saturating_add(1);
                v6 - 1
            }
        };
        for (i, p) in packets.iter().enumerate() {
            vni[i] = p.src_vni.to_le_bytes();
            shapes[i] = shape_word(p).to_le_bytes();
            ports[i] = ports_word(p.ports).to_le_bytes();
            src[i] = addr_word(p.src).to_le_bytes();
            dst[i] = addr_word(p.dst).to_le_bytes();
        }
        if v6 > 0 {
            for addr in packets.iter().flat_map(|p| [p.src, p.dst]) {
                if let IpAddr::V6(a) = addr {
                    self.bytes.extend_from_slice(&a.octets());
                }
            }
        }
        Ok(())
    }

    /// Sets slot `i` to an IPv4 packet: source VNI, IP protocol, ports (TCP and UDP; `None`
    /// for other protocols and non-first fragments), source and destination address.
    #[inline]
    pub fn set_v4(
        &mut self,
        i: usize,
        vni: u32,
        proto: u8,
        ports: Option<Ports>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<(), ColumnsError> {
        let shape = u32::from(proto) | (u32::from(ports.is_some()) * shape::PORTS);
        self.put(i, [vni, shape, ports_word(ports), src.into(), dst.into()])
    }

    /// Sets slot `i` to `packet`, of either family on each side; its IPv6 addresses go at the
    /// end of the address list.
    pub fn set(&mut self, i: usize, packet: &Packet) -> Result<(), ColumnsError> {
        if i >= self.n {
            return Err(ColumnsError::NoSlot { i, n: self.n });
        }
        let src = self.addr_word(packet.src);
        let dst = self.addr_word(packet.dst);
        let words = [
            packet.src_vni,
            shape_word(packet),
            ports_word(packet.ports),
            src,
            dst,
        ];
        self.put(i, words)
    }

    /// The word of an address: an IPv4 address as its number, an IPv6 one appended to the
    /// list and named by its index there.
    #[inline]
    fn addr_word(&mut self, addr: IpAddr) -> u32 {
        match addr {
            IpAddr::V4(a) => a.into(),
            IpAddr::V6(a) => {
                let listed = (self.bytes.len() - columns_end(self.n)) / V6_BYTES;
                self.bytes.extend_from_slice(&a.octets());
                // Past `u32::MAX` addresses the index names none: the guest refuses the batch.
                u32::try_from(listed).unwrap_or(u32::MAX)
            }
        }
    }

    /// Writes slot `i`'s word in each column.
    #[inline(always)]
    fn put(&mut self, i: usize, words: [u32; column::COUNT]) -> Result<(), ColumnsError> {
        let n = self.n;
        if i >= n {
            return Err(ColumnsError::NoSlot { i, n });
        }
        let columns = &mut self.bytes[WORD..columns_end(n)];
        let columns = columns.as_chunks_mut::<WORD>().0;
        for (c, word) in words.into_iter().enumerate() {
            if let Some(slot) = columns.get_mut(c * n + i) {
                *slot = word.to_le_bytes();
            }
        }
        Ok(())
    }

    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the batch has no packets.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The batch in the `judge-packed` layout.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Bytes of the count and the columns of `n` packets (`n` at most [`Columns::MAX_PACKETS`]).
#[inline(always)]
const fn columns_end(n: usize) -> usize {
    WORD * (1 + column::COUNT * n)
}

/// The ports word: source port in the low half, destination port in the high half.
#[inline(always)]
fn ports_word(ports: Option<Ports>) -> u32 {
    let (src, dst) = ports.map_or((0, 0), |p| (p.src, p.dst));
    u32::from(src) | u32::from(dst) << 16
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

    /// The IPv6 address list.
    #[inline(always)]
    pub(crate) fn v6_list(&self) -> &'a [[u8; V6_BYTES]] {
        self.v6
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
    use proptest::prelude::*;

    /// The layout of `wit/policy.wit` written out directly, packet by packet: what
    /// [`Columns`] must give.
    fn reference(packets: &[Packet]) -> Vec<u8> {
        let n = packets.len();
        let mut words = vec![0u32; 1 + 5 * n];
        words[0] = n as u32;
        let mut list = Vec::new();
        let mut addr = |a: IpAddr| match a {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => {
                list.push(a);
                list.len() as u32 - 1
            }
        };
        for (i, p) in packets.iter().enumerate() {
            let (sp, dp) = p.ports.map_or((0, 0), |p| (p.src, p.dst));
            let v6 = |a: IpAddr, bit: u32| if a.is_ipv6() { bit } else { 0 };
            words[1 + i] = p.src_vni;
            words[1 + n + i] = u32::from(p.proto)
                | if p.ports.is_some() { 1 << 8 } else { 0 }
                | v6(p.src, 1 << 9)
                | v6(p.dst, 1 << 10);
            words[1 + 2 * n + i] = u32::from(sp) | u32::from(dp) << 16;
            words[1 + 3 * n + i] = addr(p.src);
            words[1 + 4 * n + i] = addr(p.dst);
        }
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend(list.iter().flat_map(|a| a.octets()));
        bytes
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
        ]
    }

    fn arb_packet() -> impl Strategy<Value = Packet> {
        let ports = prop::option::of(
            (any::<u16>(), any::<u16>()).prop_map(|(src, dst)| Ports { src, dst }),
        );
        (any::<u32>(), arb_addr(), arb_addr(), any::<u8>(), ports).prop_map(
            |(src_vni, src, dst, proto, ports)| Packet {
                src_vni,
                src,
                dst,
                proto,
                ports,
            },
        )
    }

    proptest! {
        /// Columns written slot by slot, reused after an earlier burst of any size, give the
        /// reference layout byte for byte, and read back as the same packets; IPv4-only
        /// packets through `set_v4` give what `set` gives.
        #[test]
        fn columns_give_the_reference_layout(
            earlier in prop::collection::vec(arb_packet(), 0..80),
            packets in prop::collection::vec(arb_packet(), 0..80),
        ) {
            let want = reference(&packets);
            let mut columns = Columns::default();
            columns.encode(&earlier).unwrap();
            prop_assert_eq!(columns.as_bytes(), &reference(&earlier)[..]);
            columns.encode(&packets).unwrap();
            prop_assert_eq!(columns.as_bytes(), &want[..]);
            let mut bytes = vec![0xee; 7];
            encode_packets(&packets, &mut bytes);
            prop_assert_eq!(&bytes, &want);
            let batch = Batch::parse(columns.as_bytes()).unwrap();
            let decoded: Vec<Option<Packet>> = batch.packets().collect();
            let want_packets: Vec<Option<Packet>> = packets.iter().copied().map(Some).collect();
            prop_assert_eq!(decoded, want_packets);

            let v4: Vec<Packet> = packets.iter().filter(|p| !p.src.is_ipv6() && !p.dst.is_ipv6()).copied().collect();
            columns.encode(&earlier).unwrap();
            columns.begin(v4.len()).unwrap();
            for (i, p) in v4.iter().enumerate() {
                let (IpAddr::V4(src), IpAddr::V4(dst)) = (p.src, p.dst) else { unreachable!() };
                columns.set_v4(i, p.src_vni, p.proto, p.ports, src, dst).unwrap();
            }
            prop_assert_eq!(columns.as_bytes(), &reference(&v4)[..]);
        }

        /// A slot a burst leaves unset reads as a packet of VNI 0 (no VPC has it), IPv4 with
        /// no ports, whatever the burst before put there.
        #[test]
        fn an_unset_slot_is_no_earlier_packet(
            earlier in prop::collection::vec(arb_packet(), 1..40),
            unset in any::<prop::sample::Index>(),
        ) {
            let mut columns = Columns::default();
            columns.encode(&earlier).unwrap();
            let unset = unset.index(earlier.len());
            columns.begin(earlier.len()).unwrap();
            for (i, p) in earlier.iter().enumerate().filter(|(i, _)| *i != unset) {
                columns.set(i, p).unwrap();
            }
            let batch = Batch::parse(columns.as_bytes()).unwrap();
            let p = batch.packet(unset).unwrap();
            prop_assert_eq!((p.src_vni, p.proto, p.ports), (0, 0, None));
            prop_assert!(p.src.is_ipv4() && p.dst.is_ipv4());
            for (i, want) in earlier.iter().enumerate().filter(|(i, _)| *i != unset) {
                prop_assert_eq!(batch.packet(i), Some(*want));
            }
        }
    }

    #[test]
    fn columns_refuse_slots_past_the_batch_and_batches_past_the_bound() {
        let packet = Packet::portless(
            1,
            "fd00::1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            58,
        );
        let mut columns = Columns::with_len(2).unwrap();
        assert_eq!(columns.len(), 2);
        assert_eq!(
            columns.set(2, &packet),
            Err(ColumnsError::NoSlot { i: 2, n: 2 })
        );
        let v4 = [10, 0, 0, 1].into();
        assert_eq!(
            columns.set_v4(usize::MAX, 1, 6, None, v4, v4),
            Err(ColumnsError::NoSlot {
                i: usize::MAX,
                n: 2
            })
        );
        // A refused slot leaves no address in the list.
        assert_eq!(columns.as_bytes().len(), 4 * 11);
        let n = Columns::MAX_PACKETS + 1;
        assert_eq!(columns.begin(n), Err(ColumnsError::TooMany { n }));
        assert!(Columns::with_len(usize::MAX).is_err());
        // The batch in hand is left as it was.
        assert_eq!(columns.len(), 2);
        columns.begin(0).unwrap();
        assert!(columns.is_empty());
        assert_eq!(columns.as_bytes(), [0; 4]);
    }

    /// A buffer that held a larger burst is reused as it is: no allocation for a smaller one.
    #[test]
    fn columns_keep_their_buffer_across_bursts() {
        let packet = Packet::portless(
            1,
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            58,
        );
        let mut columns = Columns::with_capacity(64);
        columns.encode(&[packet; 64]).unwrap();
        let (at, capacity) = (columns.as_bytes().as_ptr(), columns.bytes.capacity());
        for n in [0, 1, 17, 64, 3] {
            columns.encode(&vec![packet; n]).unwrap();
            assert_eq!(columns.bytes.capacity(), capacity);
            assert_eq!(columns.as_bytes().as_ptr(), at);
        }
    }

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
