//! The verdict word: a verdict in 32 bits, the record `judge-packed` answers for each packet
//! (`wit/policy.wit`) and the form in which the table's matrices keep their verdicts, so
//! that the packed path copies a cell out as it is, with no branch on the verdict.
//!
//! The kind sits in the top two bits (0 drop, 1 allow, 2 allow-ambiguous), the value below
//! it: the [`DropReason`]'s code, the [`VpcId`] or the [`CandidatesId`]. A record is the word
//! in little-endian bytes.

use crate::catalog::Catalog;
use crate::packet::{CandidatesId, DropReason, Verdict, VpcId};

/// Bytes per verdict record.
pub const VERDICT_BYTES: usize = 4;

/// A verdict record's kind sits in its top two bits, the value below.
const KIND_SHIFT: u32 = 30;
const VALUE_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// The word of `drop(unknown-vpc)`: the answer for a packet of no VPC, and for every packet
/// when there is no table.
pub(crate) const UNKNOWN_VPC: u32 = verdict_word(Verdict::Drop(DropReason::UnknownVpc));

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

    /// Whether this catalog knows `word`: [`WordDecoder::verdict`] is `Some` for it. No
    /// branch, so a check over a batch's words runs straight through.
    #[inline(always)]
    pub fn knows(&self, word: u32) -> bool {
        (word & VALUE_MASK) < self.count[(word >> KIND_SHIFT) as usize]
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
                assert_eq!(decoder.knows(word), want.is_some(), "word {word:#x}");
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
        assert_eq!(
            word_verdict(UNKNOWN_VPC),
            Some(Verdict::Drop(DropReason::UnknownVpc))
        );
    }
}
