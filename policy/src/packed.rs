//! The packed record format of `judge-packed` (its byte layout is documented in
//! `wit/policy.wit`): one codec shared by the guest, which decodes packets and encodes
//! verdicts, and the host, which does the reverse.

#[cfg(target_family = "wasm")]
use std::cell::RefCell;
use std::net::IpAddr;

use crate::packet::{CandidatesId, DropReason, Packet, Ports, Verdict, VpcId};
use crate::table::{Catalog, LANES, Lanes, Stages, Table};

/// Bytes per packet record.
pub const PACKET_BYTES: usize = 44;
/// Bytes per verdict record.
pub const VERDICT_BYTES: usize = 4;

/// Where each field of a packet record lies, in bytes (`wit/policy.wit` says the same).
mod field {
    use std::ops::Range;

    /// Source VNI, u32 little-endian.
    pub const SRC_VNI: Range<usize> = 0..4;
    /// Source address family: [`super::FAMILY_V6`], or IPv4.
    pub const SRC_FAMILY: usize = 4;
    /// IP protocol number.
    pub const PROTO: usize = 5;
    /// Flags: [`super::FLAG_PORTS`].
    pub const FLAGS: usize = 6;
    /// Destination address family.
    pub const DST_FAMILY: usize = 7;
    /// Source port, u16 little-endian.
    pub const SRC_PORT: Range<usize> = 8..10;
    /// Destination port, u16 little-endian.
    pub const DST_PORT: Range<usize> = 10..12;
    /// Source address, network order; IPv4 in the first 4 bytes.
    pub const SRC_ADDR: Range<usize> = 12..28;
    /// Destination address, likewise.
    pub const DST_ADDR: Range<usize> = 28..44;
}

/// The packet has ports (bit of [`field::FLAGS`]).
const FLAG_PORTS: u8 = 1;
/// The family byte of an IPv6 address; any other value is IPv4.
const FAMILY_V6: u8 = 6;
const FAMILY_V4: u8 = 4;

fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv6() { FAMILY_V6 } else { FAMILY_V4 }
}

/// A verdict record's kind sits in its top two bits, the value below.
const KIND_SHIFT: u32 = 30;
const VALUE_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// Appends the record of `packet` to `out`.
pub fn encode_packet(packet: &Packet, out: &mut Vec<u8>) {
    out.extend_from_slice(&record(packet));
}

/// Replaces `out` with the records of `packets`, written in place.
pub fn encode_packets(packets: &[Packet], out: &mut Vec<u8>) {
    out.clear();
    out.resize(packets.len() * PACKET_BYTES, 0);
    for (rec, packet) in out
        .as_chunks_mut::<PACKET_BYTES>()
        .0
        .iter_mut()
        .zip(packets)
    {
        write_record(rec, packet);
    }
}

/// The record of `packet`.
#[inline]
fn record(packet: &Packet) -> [u8; PACKET_BYTES] {
    let mut rec = [0u8; PACKET_BYTES];
    write_record(&mut rec, packet);
    rec
}

/// Writes the record of `packet` over the zeroed `rec`. Whether a packet has ports is a coin
/// toss on mixed traffic: the flag and the ports are written without a branch on it.
#[inline(always)]
fn write_record(rec: &mut [u8; PACKET_BYTES], packet: &Packet) {
    let (src_port, dst_port) = packet.ports.map_or((0, 0), |p| (p.src, p.dst));
    rec[field::SRC_VNI].copy_from_slice(&packet.src_vni.to_le_bytes());
    rec[field::SRC_FAMILY] = family(packet.src);
    rec[field::PROTO] = packet.proto;
    rec[field::FLAGS] = u8::from(packet.ports.is_some()) * FLAG_PORTS;
    rec[field::DST_FAMILY] = family(packet.dst);
    rec[field::SRC_PORT].copy_from_slice(&src_port.to_le_bytes());
    rec[field::DST_PORT].copy_from_slice(&dst_port.to_le_bytes());
    put_addr(&mut rec[field::SRC_ADDR], packet.src);
    put_addr(&mut rec[field::DST_ADDR], packet.dst);
}

fn put_addr(slot: &mut [u8], addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => slot[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => slot.copy_from_slice(&a.octets()),
    }
}

/// The 16 address bytes of `range` in `rec`.
#[inline]
fn addr_bytes(rec: &[u8; PACKET_BYTES], range: std::ops::Range<usize>) -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(&rec[range]);
    b
}

/// The 2 bytes of a record at `at`.
#[inline(always)]
fn bytes2(rec: &[u8; PACKET_BYTES], at: usize) -> [u8; 2] {
    [rec[at], rec[at + 1]]
}

/// The 4 bytes of a record at `at`.
#[inline(always)]
fn bytes4(rec: &[u8; PACKET_BYTES], at: usize) -> [u8; 4] {
    [rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]
}

/// The ports of a record, if its flags say it has them.
#[inline(always)]
fn ports(rec: &[u8; PACKET_BYTES]) -> Option<Ports> {
    let (has_ports, (src, dst)) = port_fields(rec);
    has_ports.then_some(Ports { src, dst })
}

/// A record's ports flag and its two port fields, read whatever the flag says (the lane
/// filler picks between them without a branch).
#[inline(always)]
fn port_fields(rec: &[u8; PACKET_BYTES]) -> (bool, (u16, u16)) {
    (
        rec[field::FLAGS] & FLAG_PORTS != 0,
        (
            u16::from_le_bytes(bytes2(rec, field::SRC_PORT.start)),
            u16::from_le_bytes(bytes2(rec, field::DST_PORT.start)),
        ),
    )
}

/// Reads one packet record. Every 44 bytes are some packet: this cannot fail.
pub fn decode_packet(rec: &[u8; PACKET_BYTES]) -> Packet {
    let addr = |family: usize, at: std::ops::Range<usize>| -> IpAddr {
        let b = addr_bytes(rec, at);
        if rec[family] == FAMILY_V6 {
            IpAddr::V6(b.into())
        } else {
            IpAddr::V4([b[0], b[1], b[2], b[3]].into())
        }
    };
    Packet {
        src_vni: u32::from_le_bytes(bytes4(rec, field::SRC_VNI.start)),
        src: addr(field::SRC_FAMILY, field::SRC_ADDR),
        dst: addr(field::DST_FAMILY, field::DST_ADDR),
        proto: rec[field::PROTO],
        ports: ports(rec),
    }
}

/// The record of a verdict.
pub fn encode_verdict(verdict: Verdict) -> [u8; VERDICT_BYTES] {
    verdict_word(verdict).to_le_bytes()
}

/// A verdict record as a word: the table's matrix stores verdicts in this form, so the packed
/// path copies them out without a branch on the verdict.
pub(crate) fn verdict_word(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Drop(reason) => reason_code(reason),
        Verdict::Allow(VpcId(vpc)) => (1 << KIND_SHIFT) | (vpc & VALUE_MASK),
        Verdict::AllowAmbiguous(CandidatesId(set)) => (2 << KIND_SHIFT) | (set & VALUE_MASK),
    }
}

/// The drop reasons by code.
const REASONS: [DropReason; 4] = [
    DropReason::UnknownVpc,
    DropReason::SourceNotExposed,
    DropReason::DestinationNotExposed,
    DropReason::Denied,
];

fn reason_code(reason: DropReason) -> u32 {
    match reason {
        DropReason::UnknownVpc => 0,
        DropReason::SourceNotExposed => 1,
        DropReason::DestinationNotExposed => 2,
        DropReason::Denied => 3,
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
        0 => REASONS.get(value as usize).copied().map(Verdict::Drop),
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
        let verdicts: Box<[Verdict]> = REASONS
            .into_iter()
            .map(Verdict::Drop)
            .chain((0..vpcs).map(|v| Verdict::Allow(VpcId(v as u32))))
            .chain((0..sets).map(|s| Verdict::AllowAmbiguous(CandidatesId(s as u32))))
            .collect();
        // A catalog with more entries than a word's value can name is cut to what it can.
        let fit = |n: usize| n.min(VALUE_MASK as usize) as u32;
        let count = [fit(REASONS.len()), fit(vpcs), fit(sets), 0];
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

/// Judges a packed batch: `output` gets one verdict record per packet record of `input`, or
/// nothing when `input` is not a whole number of records. With no table, every packet is
/// `drop(unknown-vpc)`.
pub fn judge_packed(table: Option<&Table>, input: &[u8], output: &mut Vec<u8>) {
    output.clear();
    if !input.len().is_multiple_of(PACKET_BYTES) {
        return;
    }
    output.reserve(input.len() / PACKET_BYTES * VERDICT_BYTES);
    let Some(table) = table else {
        for _ in 0..input.len() / PACKET_BYTES {
            output.extend_from_slice(&encode_verdict(Verdict::Drop(DropReason::UnknownVpc)));
        }
        return;
    };
    #[cfg(target_family = "wasm")]
    {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::NEW) };
        }
        SCRATCH.with_borrow_mut(|s| judge_lanes(table, input, output, s));
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let mut scratch = Scratch::NEW;
        judge_lanes(table, input, output, &mut scratch);
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

#[inline(always)]
fn judge_lanes(table: &Table, input: &[u8], output: &mut Vec<u8>, s: &mut Scratch) {
    for chunk in input.chunks(PACKET_BYTES * LANES) {
        let records = chunk.as_chunks::<PACKET_BYTES>().0;
        let mut all_v4 = true;
        for (i, rec) in records.iter().enumerate() {
            all_v4 &= set_lane(&mut s.lanes, i, rec);
        }
        table.lookup_lanes(&s.lanes, &mut s.stages, &mut s.words);
        let words = &mut s.words;
        if !all_v4 {
            for (word, rec) in words.iter_mut().zip(records) {
                if !v4(rec) {
                    *word = verdict_word(table.lookup(&decode_packet(rec)));
                }
            }
        }
        for word in &words[..records.len()] {
            output.extend_from_slice(&word.to_le_bytes());
        }
    }
}

/// Whether both of a record's addresses are IPv4: the lanes' family.
#[inline]
fn v4(rec: &[u8; PACKET_BYTES]) -> bool {
    rec[field::SRC_FAMILY] != FAMILY_V6 && rec[field::DST_FAMILY] != FAMILY_V6
}

/// Puts what a lookup needs of a record in lane `i`, read without building a [`Packet`] (the
/// round-trip tests pin the reading down); `false` when the record is not IPv4 on both
/// sides, whose lane then holds anything.
#[inline]
fn set_lane(lanes: &mut Lanes, i: usize, rec: &[u8; PACKET_BYTES]) -> bool {
    let (has_ports, ports) = port_fields(rec);
    lanes.put(
        i,
        u32::from_le_bytes(bytes4(rec, field::SRC_VNI.start)),
        (
            u32::from_be_bytes(bytes4(rec, field::SRC_ADDR.start)),
            u32::from_be_bytes(bytes4(rec, field::DST_ADDR.start)),
        ),
        has_ports,
        ports,
    );
    v4(rec)
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

    #[test]
    fn a_batch_is_encoded_as_its_records_whatever_the_buffer_held() {
        let packets = [
            Packet::tcp(
                1,
                "10.0.0.1".parse().unwrap(),
                1,
                "10.0.0.2".parse().unwrap(),
                2,
            ),
            Packet::portless(
                2,
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                58,
            ),
        ];
        let mut one_by_one = Vec::new();
        packets
            .iter()
            .for_each(|p| encode_packet(p, &mut one_by_one));
        let mut batch = vec![0xff; 3 * PACKET_BYTES];
        encode_packets(&packets, &mut batch);
        assert_eq!(batch, one_by_one);
    }

    #[test]
    fn packets_round_trip_with_the_documented_layout() {
        let p = Packet::tcp(
            0x0102_0304,
            "10.0.0.1".parse().unwrap(),
            0x1234,
            "1.0.0.9".parse().unwrap(),
            80,
        );
        let mut buf = Vec::new();
        encode_packet(&p, &mut buf);
        assert_eq!(buf.len(), PACKET_BYTES);
        assert_eq!(&buf[0..8], &[4, 3, 2, 1, 4, 6, 1, 4]);
        assert_eq!(&buf[8..12], &[0x34, 0x12, 80, 0]);
        assert_eq!(&buf[12..17], &[10, 0, 0, 1, 0]);
        assert_eq!(&buf[28..32], &[1, 0, 0, 9]);
        assert_eq!(decode_packet(buf.as_slice().try_into().unwrap()), p);

        let q = Packet::portless(
            7,
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            58,
        );
        buf.clear();
        encode_packet(&q, &mut buf);
        assert_eq!((buf[4], buf[6], buf[7], buf[27], buf[43]), (6, 0, 6, 1, 2));
        assert_eq!(decode_packet(buf.as_slice().try_into().unwrap()), q);

        // Each address carries its own family.
        for (src, dst, families) in [
            ("10.0.0.1", "fd00::2", (4, 6)),
            ("fd00::1", "10.0.0.2", (6, 4)),
        ] {
            let m = Packet::portless(7, src.parse().unwrap(), dst.parse().unwrap(), 1);
            buf.clear();
            encode_packet(&m, &mut buf);
            assert_eq!((buf[4], buf[7]), families);
            assert_eq!(decode_packet(buf.as_slice().try_into().unwrap()), m);
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
        for (code, reason) in REASONS.into_iter().enumerate() {
            assert_eq!(reason_code(reason), code as u32);
        }
        assert_eq!(REASONS.len(), DropReason::ALL.len());
        // The table answers an unknown VNI with word 0 without building a verdict.
        assert_eq!(verdict_word(Verdict::default()), 0);
    }

    #[test]
    fn a_partial_record_gets_no_verdicts() {
        let mut out = vec![1, 2, 3];
        judge_packed(None, &[0; PACKET_BYTES + 1], &mut out);
        assert!(out.is_empty());
        judge_packed(None, &[0; 2 * PACKET_BYTES], &mut out);
        assert_eq!(out, [0; 8]);
    }
}
