//! The packed batch format of `judge-packed` (its byte layout is documented in
//! `wit/policy.wit`): one codec shared by the guest, which decodes packets and encodes
//! verdicts, and the host, which does the reverse.
//!
//! A batch crosses as columns of little-endian `u32` words, one word a packet in each: the
//! guest's lookup lanes take each field as it lies, with no per-byte decoding, and IPv4
//! addresses arrive as numbers, so a Wasm guest (which has no byte-swap instruction) never
//! swaps bytes. IPv6 addresses, the cold family, sit in a list after the columns.

#[cfg(target_family = "wasm")]
use std::cell::RefCell;
use std::net::{IpAddr, Ipv6Addr};

use crate::packet::{CandidatesId, DropReason, Packet, Ports, Verdict, VpcId};
use crate::table::{Catalog, LANES, Lanes, Stages, Table};

/// Bytes per verdict record.
pub const VERDICT_BYTES: usize = 4;
/// Bytes of one word of a batch.
const WORD: usize = 4;
/// Bytes of an IPv6 address in a batch's address list.
const V6_BYTES: usize = 16;

/// The columns of a batch, in order: word `column * n + i` of the columns is packet `i`'s.
mod column {
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
mod shape {
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
fn split_ports(word: u32) -> (u16, u16) {
    (word as u16, (word >> 16) as u16)
}

/// A verdict record's kind sits in its top two bits, the value below.
const KIND_SHIFT: u32 = 30;
const VALUE_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// Replaces `out` with the batch of `packets` (at most `u32::MAX` of them: the count is a
/// word; no dataplane batch comes near).
///
/// On a gateway's traffic this loop waits on memory, not on its instructions: a branch-free
/// version without bounds checks measured the same, and fetching the next batch ahead gained
/// 2-3 % (`BENCHMARKS.md`, eighth session).
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

    /// One column's words.
    #[inline(always)]
    fn column(&self, column: usize) -> &'a [[u8; WORD]] {
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

/// The record of a verdict.
pub fn encode_verdict(verdict: Verdict) -> [u8; VERDICT_BYTES] {
    verdict_word(verdict).to_le_bytes()
}

/// A verdict record as a word: the table's matrix stores verdicts in this form, so the packed
/// path copies them out without a branch on the verdict.
pub(crate) const fn verdict_word(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Drop(reason) => reason.code() as u32,
        Verdict::Allow(VpcId(vpc)) => (1 << KIND_SHIFT) | (vpc & VALUE_MASK),
        Verdict::AllowAmbiguous(CandidatesId(set)) => (2 << KIND_SHIFT) | (set & VALUE_MASK),
    }
}

/// Reads one verdict record; `None` for a kind or drop reason that does not exist. The
/// caller checks VPC and candidate indices against the configuration it knows.
pub fn decode_verdict(rec: [u8; VERDICT_BYTES]) -> Option<Verdict> {
    word_verdict(u32::from_le_bytes(rec))
}

/// [`decode_verdict`] of a word.
#[inline]
fn word_verdict(word: u32) -> Option<Verdict> {
    let value = word & VALUE_MASK;
    match word >> KIND_SHIFT {
        0 => u8::try_from(value)
            .ok()
            .and_then(DropReason::from_code)
            .map(Verdict::Drop),
        1 => Some(Verdict::Allow(VpcId(value))),
        2 => Some(Verdict::AllowAmbiguous(CandidatesId(value))),
        _ => None,
    }
}

/// Decodes the verdict words of one catalog with no branch on the verdict's kind: each word
/// the catalog knows indexes one verdict built beforehand. (A `match` on the kind compiles to
/// a jump the CPU mispredicts on mixed traffic, allowed and dropped packets interleaved.)
#[derive(Debug, Clone, Default)]
pub struct WordDecoder {
    /// The drop verdicts, then `allow` of each VPC, then each ambiguous verdict.
    verdicts: Box<[Verdict]>,
    /// Where the verdicts of each kind start in `verdicts`, and how many there are (kind 3
    /// has none).
    base: [u32; 4],
    count: [u32; 4],
}

impl WordDecoder {
    /// The decoder of the verdicts `catalog` knows.
    pub fn new(catalog: &Catalog) -> WordDecoder {
        let (vpcs, sets) = (catalog.vpcs.len(), catalog.candidate_sets.len());
        let verdicts: Box<[Verdict]> = DropReason::ALL
            .into_iter()
            .map(Verdict::Drop)
            .chain((0..vpcs).map(|v| Verdict::Allow(VpcId(v as u32))))
            .chain((0..sets).map(|s| Verdict::AllowAmbiguous(CandidatesId(s as u32))))
            .collect();
        // A catalog with more entries than a word's value can name is cut to what it can.
        let fit = |n: usize| n.min(VALUE_MASK as usize) as u32;
        let count = [fit(DropReason::COUNT), fit(vpcs), fit(sets), 0];
        let base = [0, count[0], count[0] + fit(vpcs), 0];
        WordDecoder {
            verdicts,
            base,
            count,
        }
    }

    /// The verdict of a word, or `None` for one this catalog does not know (a kind or drop
    /// reason that does not exist, or a VPC or candidate set past the catalog's):
    /// `decode_verdict` filtered by [`Catalog::knows`].
    #[inline]
    pub fn verdict(&self, word: u32) -> Option<Verdict> {
        let kind = (word >> KIND_SHIFT) as usize;
        let value = word & VALUE_MASK;
        let known = value < self.count[kind];
        let index = std::hint::select_unpredictable(known, self.base[kind] + value, u32::MAX);
        self.verdicts.get(index as usize).copied()
    }
}

/// Judges a packed batch: `output` gets one verdict record per packet of `input`, or nothing
/// when `input` does not follow the batch layout (an IPv6 address past the list included).
/// With no table, every packet is `drop(unknown-vpc)`.
pub fn judge_packed(table: Option<&Table>, input: &[u8], output: &mut Vec<u8>) {
    output.clear();
    let Some(batch) = Batch::parse(input) else {
        return;
    };
    let Some(table) = table else {
        if batch.packets().all(|p| p.is_some()) {
            // Word 0 is drop(unknown-vpc).
            output.resize(batch.len() * VERDICT_BYTES, 0);
        }
        return;
    };
    output.resize(batch.len() * VERDICT_BYTES, 0);
    #[cfg(target_family = "wasm")]
    let judged = {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::NEW) };
        }
        SCRATCH.with_borrow_mut(|s| judge_lanes(table, &batch, output, s))
    };
    #[cfg(not(target_family = "wasm"))]
    let judged = {
        let mut scratch = Scratch::NEW;
        judge_lanes(table, &batch, output, &mut scratch)
    };
    if judged.is_err() {
        output.clear();
    }
}

/// The working memory of [`judge_packed`]: a chunk's lanes, the lookup's stages and the
/// verdict words. Natively it lives on the stack; a Wasm guest keeps it in a static (see
/// `Table::lookup_lanes` for why).
#[derive(Debug, Clone)]
struct Scratch {
    lanes: Lanes,
    stages: Stages,
    words: [u32; LANES],
}

impl Scratch {
    const NEW: Scratch = Scratch {
        lanes: Lanes::EMPTY,
        stages: Stages::NEW,
        words: [0; LANES],
    };
}

/// Judges `batch` into `output` (one verdict record a packet) [`LANES`] packets at a time:
/// their columns' words straight into the lanes, the lanes looked up in stages, and packets
/// that are not IPv4 on both sides on their own. `Err` for an IPv6 address past the list.
#[inline(always)]
fn judge_lanes(
    table: &Table,
    batch: &Batch<'_>,
    output: &mut [u8],
    s: &mut Scratch,
) -> Result<(), ()> {
    let word = |w: &[u8; WORD]| u32::from_le_bytes(*w);
    let columns = [
        column::VNI,
        column::SHAPE,
        column::PORTS,
        column::SRC,
        column::DST,
    ]
    .map(|c| batch.column(c).chunks(LANES));
    let [vnis, shapes, ports, srcs, dsts] = columns;
    let chunks = vnis.zip(shapes).zip(ports).zip(srcs.zip(dsts));
    let outs = output.as_chunks_mut::<VERDICT_BYTES>().0.chunks_mut(LANES);
    for ((first, (((vni, shape), ports), (src, dst))), out) in
        (0..).step_by(LANES).zip(chunks).zip(outs)
    {
        let mut families = 0;
        for (i, ((vni, shape), (ports, (src, dst)))) in vni
            .iter()
            .zip(shape)
            .zip(ports.iter().zip(src.iter().zip(dst)))
            .enumerate()
        {
            let shape = word(shape);
            families |= shape;
            s.lanes.put(
                i,
                word(vni),
                (word(src), word(dst)),
                shape & shape::PORTS != 0,
                split_ports(word(ports)),
            );
        }
        table.lookup_lanes(&s.lanes, &mut s.stages, &mut s.words);
        let words = &mut s.words[..vni.len()];
        if families & shape::V6 != 0 {
            for (i, (verdict, shape)) in words.iter_mut().zip(shape).enumerate() {
                if word(shape) & shape::V6 != 0 {
                    let Some(packet) = batch.packet(first + i) else {
                        return Err(());
                    };
                    *verdict = verdict_word(table.lookup(&packet));
                }
            }
        }
        for (out, word) in out.iter_mut().zip(words.iter()) {
            *out = word.to_le_bytes();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_decoder_knows_what_the_catalog_knows() {
        let vpc = |name: &str| crate::VpcEntry {
            name: name.into(),
            vni: 1,
        };
        let catalog = Catalog {
            vpcs: vec![vpc("a"), vpc("b"), vpc("c")],
            candidate_sets: vec![vec![VpcId(0), VpcId(2)]],
        };
        let decoder = WordDecoder::new(&catalog);
        let mut known = 0;
        for kind in 0..4u32 {
            for value in [0, 1, 2, 3, 4, 5, VALUE_MASK - 1, VALUE_MASK] {
                let word = kind << KIND_SHIFT | value;
                let want = word_verdict(word).filter(|&v| catalog.knows(v));
                assert_eq!(decoder.verdict(word), want, "word {word:#x}");
                known += usize::from(want.is_some());
            }
        }
        // Four drop reasons, three VPCs, one candidate set.
        assert_eq!(known, 8);
        assert_eq!(
            WordDecoder::new(&Catalog::default()).verdict(1 << KIND_SHIFT),
            None
        );
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

    #[test]
    fn a_batch_off_its_layout_gets_no_verdicts() {
        let packet = Packet::portless(
            1,
            "fd00::1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            58,
        );
        let mut good = Vec::new();
        encode_packets(&[packet; 2], &mut good);
        let mut out = vec![1, 2, 3];
        judge_packed(None, &good, &mut out);
        assert_eq!(out, [0; 8], "drop(unknown-vpc) without a table");

        let mut more = good.clone();
        more[0] = 3;
        let mut index_past_the_list = good.clone();
        // Packet 1's source address index (word 1 + 3n + 1) is 2 of a list of 2.
        index_past_the_list[4 * 8..4 * 9].copy_from_slice(&2u32.to_le_bytes());
        for (bad, why) in [
            (&good[..good.len() - 1], "a partial word"),
            (&good[..good.len() - 4], "a partial address list"),
            (&good[..3], "no packet count"),
            (&more[..], "more packets than the columns hold"),
            (&[0xff; 4][..], "a count whose columns overflow"),
        ] {
            assert!(Batch::parse(bad).is_none(), "{why}");
            judge_packed(None, bad, &mut out);
            assert!(out.is_empty(), "{why}");
        }
        assert!(Batch::parse(&index_past_the_list).is_some());
        let table = Table::build(&crate::Config::default()).unwrap();
        for table in [None, Some(&table)] {
            judge_packed(table, &good, &mut out);
            assert_eq!(out.len(), 8);
            judge_packed(table, &index_past_the_list, &mut out);
            assert!(out.is_empty(), "an IPv6 address past the list");
        }
    }

    #[test]
    fn verdicts_round_trip_and_unknown_codes_are_refused() {
        for v in [
            Verdict::Allow(VpcId(5)),
            Verdict::AllowAmbiguous(CandidatesId(9)),
            Verdict::Drop(DropReason::UnknownVpc),
            Verdict::Drop(DropReason::SourceNotExposed),
            Verdict::Drop(DropReason::DestinationNotExposed),
            Verdict::Drop(DropReason::Denied),
        ] {
            assert_eq!(decode_verdict(encode_verdict(v)), Some(v));
        }
        assert_eq!(encode_verdict(Verdict::Allow(VpcId(5))), [5, 0, 0, 0x40]);
        assert_eq!(
            decode_verdict(3u32.to_le_bytes()),
            Some(Verdict::Drop(DropReason::Denied))
        );
        assert_eq!(decode_verdict(4u32.to_le_bytes()), None);
        assert_eq!(decode_verdict((3u32 << 30).to_le_bytes()), None);
    }

    #[test]
    fn drop_reasons_decode_by_their_code() {
        for reason in DropReason::ALL {
            let word = verdict_word(Verdict::Drop(reason));
            assert_eq!(word, u32::from(reason.code()));
            assert_eq!(word_verdict(word), Some(Verdict::Drop(reason)));
        }
        assert_eq!(word_verdict(DropReason::COUNT as u32), None);
    }
}
