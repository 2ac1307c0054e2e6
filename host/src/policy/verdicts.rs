//! A burst's verdicts read where the policy's answer lies.

use flowgate_policy::packed::{VERDICT_BYTES, WordDecoder};
use flowgate_policy::{Verdict, VpcId};

use super::PolicyFault;

/// The verdicts of a burst judged by [`Policy::judge_columns`](super::Policy::judge_columns):
/// the policy's answer as it came back, one verdict word a packet, checked once against the
/// configuration's catalog (every word names a verdict it knows) and decoded on demand with
/// no branch on the verdict's kind.
#[derive(Debug, Clone, Copy)]
pub struct Verdicts<'a> {
    words: &'a [[u8; VERDICT_BYTES]],
    decoder: &'a WordDecoder,
}

impl<'a> Verdicts<'a> {
    /// `answer` read as the verdicts of `packets` packets: [`PolicyFault::WrongLength`]
    /// unless it holds one word a packet, [`PolicyFault::UnknownVerdict`] for the first word
    /// `decoder` does not know.
    pub(crate) fn check(
        answer: &'a [u8],
        packets: usize,
        decoder: &'a WordDecoder,
    ) -> Result<Verdicts<'a>, PolicyFault> {
        let (words, partial) = answer.as_chunks::<VERDICT_BYTES>();
        if words.len() != packets || !partial.is_empty() {
            return Err(PolicyFault::WrongLength {
                expected: packets,
                got: answer.len() / VERDICT_BYTES,
            });
        }
        // One pass with no early exit, then a search only when some word is unknown.
        let word = |w: &[u8; VERDICT_BYTES]| u32::from_le_bytes(*w);
        let known = words
            .iter()
            .fold(true, |all, w| all & decoder.knows(word(w)));
        if !known {
            let index = words
                .iter()
                .position(|w| !decoder.knows(word(w)))
                .unwrap_or_default();
            return Err(PolicyFault::UnknownVerdict { index });
        }
        Ok(Verdicts { words, decoder })
    }

    /// `answer` read again as the verdicts [`Verdicts::check`] accepted it for: the caller
    /// holds that `answer` has not changed since (a word it did not check decodes as the
    /// default verdict, a drop, never as another VPC).
    pub(crate) fn checked_before(answer: &'a [u8], decoder: &'a WordDecoder) -> Verdicts<'a> {
        Verdicts {
            words: answer.as_chunks::<VERDICT_BYTES>().0,
            decoder,
        }
    }

    /// Verdicts: one a packet of the burst.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the burst had no packets.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Packet `i`'s verdict word, as `wit/policy.wit` lays it out.
    #[inline]
    pub fn word(&self, i: usize) -> Option<u32> {
        self.words.get(i).map(|w| u32::from_le_bytes(*w))
    }

    /// Packet `i`'s verdict.
    #[inline]
    pub fn verdict(&self, i: usize) -> Option<Verdict> {
        self.word(i).and_then(|w| self.decoder.verdict(w))
    }

    /// The VPC to forward packet `i` to: `Some` for `allow`, `None` for a drop and for
    /// `allow-ambiguous` (whose candidates [`Verdicts::verdict`] names).
    #[inline]
    pub fn forward_vpc(&self, i: usize) -> Option<VpcId> {
        match self.verdict(i)? {
            Verdict::Allow(vpc) => Some(vpc),
            Verdict::Drop(_) | Verdict::AllowAmbiguous(_) => None,
        }
    }

    /// The verdicts in packet order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Verdict> + use<'a> {
        let decoder = self.decoder;
        // Every word was checked known: the default is never taken.
        self.words
            .iter()
            .map(move |w| decoder.verdict(u32::from_le_bytes(*w)).unwrap_or_default())
    }

    /// Decodes the verdicts into `out`, as many as it holds.
    pub fn decode_into(&self, out: &mut [Verdict]) {
        for (slot, verdict) in out.iter_mut().zip(self.iter()) {
            *slot = verdict;
        }
    }
}

#[cfg(test)]
mod tests {
    use flowgate_policy::packed::encode_verdict;
    use flowgate_policy::{CandidatesId, Catalog, DropReason, VpcEntry};

    use super::*;

    fn catalog() -> Catalog {
        let vpc = |name: &str| VpcEntry {
            name: name.into(),
            vni: 1,
        };
        Catalog {
            vpcs: vec![vpc("a"), vpc("b")],
            candidate_sets: vec![vec![VpcId(0), VpcId(1)]],
        }
    }

    #[test]
    fn verdicts_are_read_where_they_lie() {
        let decoder = WordDecoder::new(&catalog());
        let want = [
            Verdict::Allow(VpcId(1)),
            Verdict::Drop(DropReason::Denied),
            Verdict::AllowAmbiguous(CandidatesId(0)),
            Verdict::Allow(VpcId(0)),
        ];
        let answer: Vec<u8> = want.iter().flat_map(|v| encode_verdict(*v)).collect();
        let verdicts = Verdicts::check(&answer, 4, &decoder).unwrap();
        assert_eq!(verdicts.len(), 4);
        assert_eq!(verdicts.iter().collect::<Vec<_>>(), want);
        assert_eq!(verdicts.word(0), Some(1 << 30 | 1));
        assert_eq!(verdicts.verdict(1), Some(want[1]));
        assert_eq!(verdicts.verdict(4), None);
        let forward: Vec<Option<VpcId>> = (0..5).map(|i| verdicts.forward_vpc(i)).collect();
        assert_eq!(forward, [Some(VpcId(1)), None, None, Some(VpcId(0)), None]);
        let mut out = [Verdict::default(); 4];
        verdicts.decode_into(&mut out);
        assert_eq!(out, want);
    }

    #[test]
    fn an_answer_off_the_burst_or_the_catalog_is_a_fault() {
        let decoder = WordDecoder::new(&catalog());
        let good = encode_verdict(Verdict::Allow(VpcId(1)));
        let past_the_vpcs = encode_verdict(Verdict::Allow(VpcId(2)));
        let answer = [good, good, past_the_vpcs, good, past_the_vpcs].concat();
        assert!(matches!(
            Verdicts::check(&answer, 5, &decoder),
            Err(PolicyFault::UnknownVerdict { index: 2 })
        ));
        for (bytes, packets, got) in [(&answer[..8], 3, 2), (&answer[..9], 2, 2), (&[][..], 1, 0)] {
            assert!(
                matches!(
                    Verdicts::check(bytes, packets, &decoder),
                    Err(PolicyFault::WrongLength { expected, got: g }) if expected == packets && g == got
                ),
                "{} bytes for {packets} packets",
                bytes.len()
            );
        }
        // Kind 3 and a drop reason past the last are unknown to any catalog.
        for word in [3u32 << 30, DropReason::COUNT as u32] {
            let answer = [good, word.to_le_bytes()].concat();
            assert!(matches!(
                Verdicts::check(&answer, 2, &decoder),
                Err(PolicyFault::UnknownVerdict { index: 1 })
            ));
        }
        assert!(Verdicts::check(&[], 0, &decoder).is_ok_and(|v| v.is_empty()));
    }
}
