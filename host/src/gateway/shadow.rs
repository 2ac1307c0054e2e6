//! A shadow release: the live release with its module or configuration replaced, prepared and
//! checked exactly as a swap prepares one ([`Gateway::prepare_swap`]) but not published. Each
//! worker judges a share of its batches with it too, after the batch's live verdicts are
//! applied, and counts where the two releases differ; the shadow never changes what is
//! forwarded. Promotion publishes exactly the release that was measured, while the live
//! release is still the one it was measured against; any other publication discards it.
//!
//! Each worker counts into a tally of its own ([`Shadow`] holds one per worker), locked once
//! per batch it judges with the shadow; a report merges them when it is read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use flowgate_policy::{Catalog, DropReason, Packet, Verdict, packet::proto};

use super::{
    Approval, Cause, Gateway, ModuleBytes, Origin, Release, SwapError, SwapRequest, lock,
    operator_origin,
};
use crate::PolicyFault;
use crate::oci::{Digest, Reference};

/// The share of batches judged with a shadow unless told otherwise
/// ([`super::Options::shadow_share`]): chosen by the `shadow` benchmark so that the live path
/// keeps at least 85 % of its throughput at 1,000 peerings (see BENCHMARKS.md).
pub const DEFAULT_SHADOW_SHARE: f64 = 0.0625;

/// A shadow batch's CPU-time deadline, given the live one: a twentieth of it (25 ms of the
/// default 500), so that a shadow module that loops holds its worker that long, once, where
/// a live one may hold it for the whole deadline. The epoch's tick (5 ms) is the least.
pub(super) fn shadow_deadline(live: Duration) -> Duration {
    live / 20
}

/// Differing packets kept as samples, the first ones seen.
pub const MAX_SAMPLES: usize = 32;

/// Source and destination VPC pairs a worker counts changed packets for; beyond them, changed
/// packets of new pairs are counted under `(other, other)`.
const MAX_PAIRS: usize = 4096;

/// Pairs a report lists, the most changed first.
pub const TOP_PAIRS: usize = 10;

flowgate_policy::labels! {
    /// A verdict's outcome, as the report's matrix counts it: `allow`, `allow-ambiguous` or
    /// `drop` by reason (`flowgate_shadow_packets_total{live,shadow}`).
    pub enum Outcome {
        /// Allowed to one VPC.
        Allow => "allow",
        /// Allowed, with an ambiguous destination.
        AllowAmbiguous => "allow-ambiguous",
        /// Dropped: the source VNI names no VPC.
        DropUnknownVpc => "drop(unknown-vpc)",
        /// Dropped: the source is not exposed.
        DropSourceNotExposed => "drop(source-not-exposed)",
        /// Dropped: the destination is not exposed.
        DropDestinationNotExposed => "drop(destination-not-exposed)",
        /// Dropped by a module's own rule.
        DropDenied => "drop(denied)",
    }
}

impl Outcome {
    /// The outcome of `verdict`.
    pub fn of(verdict: Verdict) -> Outcome {
        match verdict {
            Verdict::Allow(_) => Outcome::Allow,
            Verdict::AllowAmbiguous(_) => Outcome::AllowAmbiguous,
            Verdict::Drop(DropReason::UnknownVpc) => Outcome::DropUnknownVpc,
            Verdict::Drop(DropReason::SourceNotExposed) => Outcome::DropSourceNotExposed,
            Verdict::Drop(DropReason::DestinationNotExposed) => Outcome::DropDestinationNotExposed,
            Verdict::Drop(DropReason::Denied) => Outcome::DropDenied,
        }
    }
}

flowgate_policy::labels! {
    /// How a shadow ended (`flowgate_shadow_ends_total{how}`).
    pub enum End {
        /// An operator discarded it (`DELETE /shadow`).
        Discarded => "discarded",
        /// It was promoted: it serves now.
        Promoted => "promoted",
        /// Another shadow was staged in its place.
        Replaced => "replaced",
        /// Another release went live (a swap, rollback, SIGHUP, auto-revert or the tag
        /// watch's swap): what it was compared against is gone.
        LiveChanged => "live-changed",
        /// Its module failed on a batch, or a worker's instance of it could not start.
        Fault => "fault",
        /// The tag watch's rollout gate refused it: it changed more than its budget.
        Refused => "refused",
        /// The tag watch's rollout gate had nothing to go by: it judged no packet.
        Unjudged => "unjudged",
        /// The tag watch that staged it was paused while it was judged.
        WatchPaused => "watch-paused",
        /// The watched tag no longer names its digest (or the registry could not say so)
        /// when its time was up.
        TagMoved => "tag-moved",
        /// The tag watch's promotion of it was refused: its audit record could not be written.
        Unrecorded => "unrecorded",
    }
}

/// How much a shadow may change and still be promoted by a rollout gate (`flowgate swap
/// --shadow`, and the tag watch's `--pull-shadow`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// At most this many packets judged otherwise.
    Packets(u64),
    /// At most this share (0 to 1) of the packets compared judged otherwise.
    Share(f64),
}

impl Budget {
    /// Whether a shadow with `totals` may be promoted: it judged some packets, and changed
    /// no more of them than the budget. A shadow that saw no traffic has nothing to go by.
    pub fn admits(&self, totals: &Totals) -> bool {
        totals.packets > 0
            && match *self {
                Budget::Packets(most) => totals.changed <= most,
                Budget::Share(most) => totals.changed as f64 <= most * totals.packets as f64,
            }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Packets(n) => write!(f, "at most {n} packets changed"),
            Budget::Share(share) => write!(f, "at most a share of {share} of the packets changed"),
        }
    }
}

/// A differing packet: the packet in `explain`'s notation (`vni:N SRC[:PORT] -> DST[:PORT]
/// PROTO`), with its verdict under each release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Its place among the differing packets seen (from 0).
    pub seq: usize,
    /// The packet, as `flowgate explain` reads it.
    pub packet: String,
    /// The source VPC's name under the live release (`None`: an unknown VNI).
    pub src_vpc: Option<String>,
    /// The live verdict, as the spec writes it (`allow(vpc-2)`).
    pub live: String,
    /// The shadow's verdict.
    pub shadow: String,
}

/// What one worker counted of a shadow.
#[derive(Debug, Clone, Default)]
struct Tally {
    batches: u64,
    packets: u64,
    changed: u64,
    dst_changed: u64,
    matrix: [[u64; Outcome::COUNT]; Outcome::COUNT],
    /// Changed packets by source VNI and destination ([`pair_key`]), named when the report
    /// is read.
    pairs: HashMap<u64, u64, BuildPairHasher>,
    /// Changed packets of pairs beyond [`MAX_PAIRS`].
    other_pairs: u64,
    samples: Vec<Sample>,
}

/// A changed packet's destination VPC in the pairs: the live release's (an index of its
/// catalog), the shadow's, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dst {
    Live(u32),
    Shadow(u32),
    None,
}

/// The key of a pair: the source VNI (24 bits on the wire, any `u32` here) in the high half,
/// the destination in the low half (`Live(i)` as `2i`, `Shadow(i)` as `2i + 1`, `None` as
/// `u32::MAX`; indices above `u32::MAX / 2` fold into `None`).
fn pair_key(vni: u32, dst: Dst) -> u64 {
    let low = match dst {
        Dst::Live(i) if i < u32::MAX / 2 => i * 2,
        Dst::Shadow(i) if i < u32::MAX / 2 => i * 2 + 1,
        _ => u32::MAX,
    };
    (u64::from(vni) << 32) | u64::from(low)
}

/// The source VNI and destination of a pair's key.
fn pair_of(key: u64) -> (u32, Dst) {
    let (vni, low) = ((key >> 32) as u32, key as u32);
    let dst = match low {
        u32::MAX => Dst::None,
        n if n % 2 == 0 => Dst::Live(n / 2),
        n => Dst::Shadow(n / 2),
    };
    (vni, dst)
}

/// A hasher for the pairs' keys, which the packet path counts into: one multiplication (the
/// keys come from the gateway's own verdicts and VNIs; a flood of one VNI's pairs is bounded by
/// [`MAX_PAIRS`]).
#[derive(Default, Clone, Copy)]
struct PairHasher(u64);

impl std::hash::Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

type BuildPairHasher = std::hash::BuildHasherDefault<PairHasher>;

/// A shadow's totals: in its report, and recorded by the release it was promoted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// The live release's ETag it was compared against.
    pub base_etag: String,
    /// Batches judged with it.
    pub batches: u64,
    /// Packets judged by both releases.
    pub packets: u64,
    /// Packets whose verdict differs (in the spec's notation: another outcome, destination,
    /// candidate set or drop reason).
    pub changed: u64,
    /// Packets allowed by both whose destination VPC differs.
    pub dst_changed: u64,
}

/// A shadow's report, merged from its workers' tallies.
#[derive(Debug, Clone)]
pub struct Report {
    /// The totals.
    pub totals: Totals,
    /// Packets by live outcome (rows) and shadow outcome (columns), indexed by
    /// [`Outcome::index`].
    pub matrix: [[u64; Outcome::COUNT]; Outcome::COUNT],
    /// Source VPC to destination VPC pairs by changed packets, the most first (at most
    /// [`TOP_PAIRS`]). The destination is the live one when the live release allowed the
    /// packet to one VPC, else the shadow's, else `-`; an unknown source VNI is `vni:N`.
    pub top_pairs: Vec<(String, String, u64)>,
    /// The first differing packets (at most [`MAX_SAMPLES`]).
    pub samples: Vec<Sample>,
}

/// A staged shadow release.
pub struct Shadow {
    /// The release, prepared as a swap would have, with one instance per worker.
    pub release: Arc<Release>,
    /// The ETag of the live release it is compared against.
    pub base_etag: String,
    /// That release's generation.
    pub base_generation: u64,
    /// When it was staged (Unix time, milliseconds).
    pub staged_unix_ms: u64,
    /// The reference its module was pulled by, with the digest, when it was pulled.
    follows: Option<(Reference, Digest)>,
    /// Whether the live release names its verdicts as the shadow does (same VPCs and
    /// candidate sets): verdicts are then compared as they are.
    same_names: bool,
    /// The live release's VPC indices by VNI, for the pairs.
    live_vnis: HashMap<u32, usize>,
    /// The live release's catalog, which names the pairs' live destinations.
    base_catalog: Catalog,
    tallies: Vec<Mutex<Tally>>,
    /// Differing packets seen, for the samples' order.
    differing: AtomicUsize,
    /// How it ended, once it has: set once, under the slot's lock, before it is unstaged.
    ended: OnceLock<End>,
    /// Its first fault, once it has one: whether the module made it (not the host). Set
    /// before the fault takes the slot's lock, so that a promotion holding that lock sees it.
    fault: OnceLock<bool>,
}

/// The last word on discarding a shadow (the admin API writes its audit record here): a
/// refusal, with why, keeps it staged.
pub type DiscardApproval<'a> = &'a dyn Fn(&Shadow) -> Result<(), String>;

/// How the last shadow ended, for `GET /shadow` once it is gone.
#[derive(Debug, Clone)]
pub struct Discarded {
    /// How.
    pub how: End,
    /// Why, in a sentence.
    pub why: String,
    /// Its ETag.
    pub etag: String,
    /// Its totals then.
    pub totals: Totals,
    /// When (Unix time, milliseconds).
    pub unix_ms: u64,
}

/// Why a shadow request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// No shadow is staged.
    #[error("no shadow release is staged{}", gone.as_ref().map(|d| format!(" (the last one: {}, {})", d.how, d.why)).unwrap_or_default())]
    None {
        /// How the last one ended.
        gone: Option<Box<Discarded>>,
    },
    /// `If-Match` did not name the staged shadow.
    #[error(
        "the staged shadow is {staged}, not {expected}: read GET /shadow again and decide anew"
    )]
    StaleShadow {
        /// What `If-Match` said.
        expected: String,
        /// The staged shadow's ETag.
        staged: String,
    },
    /// `If-Match` was missing: promotion names the shadow it promotes.
    #[error("promotion needs `If-Match` with the staged shadow's ETag ({staged})")]
    NoIfMatch {
        /// The staged shadow's ETag.
        staged: String,
    },
    /// The live release is no longer the one the shadow was compared against.
    #[error("the live release is {running}, not {base}, which the shadow was compared against")]
    StaleLive {
        /// The shadow's base.
        base: String,
        /// The live release's ETag.
        running: String,
    },
    /// The change could not be recorded, so it was not made.
    #[error("the change could not be recorded, so it was not made: {0}")]
    NotRecorded(String),
    /// The shadow's module failed on a batch as it was being promoted: it was discarded.
    #[error(
        "the shadow's module failed on a copy of a live batch as it was being promoted: it is discarded, and nothing was promoted"
    )]
    Faulted,
}

impl ShadowError {
    /// The reason in answers and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            ShadowError::None { .. } => "no-shadow",
            ShadowError::StaleShadow { .. } | ShadowError::NoIfMatch { .. } => "stale-shadow",
            ShadowError::StaleLive { .. } => "stale-digest",
            ShadowError::NotRecorded(_) => "audit-failed",
            ShadowError::Faulted => "shadow-fault",
        }
    }
}

/// The gateway's shadow: the one staged, read by the workers at every batch, and how the last
/// one ended. Every change is made under `write`.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) staged: ArcSwapOption<Shadow>,
    write: Mutex<Option<Discarded>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A VPC's name by id, if the catalog has it.
fn vpc_name(catalog: &Catalog, id: flowgate_policy::VpcId) -> Option<&str> {
    catalog.vpcs.get(id.0 as usize).map(|v| v.name.as_str())
}

/// Whether two verdicts, each named by its own release's catalog, say the same.
fn same_verdict(live: (&Catalog, Verdict), shadow: (&Catalog, Verdict)) -> bool {
    match (live.1, shadow.1) {
        (Verdict::Allow(a), Verdict::Allow(b)) => {
            vpc_name(live.0, a).is_some() && vpc_name(live.0, a) == vpc_name(shadow.0, b)
        }
        (Verdict::AllowAmbiguous(a), Verdict::AllowAmbiguous(b)) => {
            let (Some(a), Some(b)) = (
                live.0.candidate_sets.get(a.0 as usize),
                shadow.0.candidate_sets.get(b.0 as usize),
            ) else {
                return false;
            };
            a.len() == b.len()
                && a.iter().zip(b).all(|(&x, &y)| {
                    let x = vpc_name(live.0, x);
                    x.is_some() && x == vpc_name(shadow.0, y)
                })
        }
        (a, b) => a == b,
    }
}

/// A verdict in the spec's notation, or what the catalog cannot name.
fn verdict_text(catalog: &Catalog, verdict: Verdict) -> String {
    if catalog.knows(verdict) {
        catalog.verdict_text(verdict)
    } else {
        format!("{verdict:?}")
    }
}

/// A packet in `explain`'s notation, by VNI.
pub fn packet_text(packet: &Packet) -> String {
    let end = |ip: std::net::IpAddr, port: Option<u16>| match port {
        Some(port) => std::net::SocketAddr::new(ip, port).to_string(),
        None => ip.to_string(),
    };
    let proto = match packet.proto {
        proto::TCP => "tcp".to_owned(),
        proto::UDP => "udp".to_owned(),
        proto::ICMP => "icmp".to_owned(),
        proto::ICMPV6 => "icmpv6".to_owned(),
        n => n.to_string(),
    };
    format!(
        "vni:{} {} -> {} {proto}",
        packet.src_vni,
        end(packet.src, packet.ports.map(|p| p.src)),
        end(packet.dst, packet.ports.map(|p| p.dst)),
    )
}

impl Shadow {
    fn new(
        release: Release,
        live: &Release,
        workers: usize,
        follows: Option<(Reference, Digest)>,
    ) -> Shadow {
        let live_vnis = (live.catalog.vpcs.iter().enumerate())
            .map(|(i, v)| (v.vni, i))
            .collect();
        Shadow {
            same_names: release.catalog == live.catalog,
            release: Arc::new(release),
            base_etag: live.etag(),
            base_generation: live.generation,
            staged_unix_ms: unix_ms(),
            follows,
            live_vnis,
            base_catalog: live.catalog.clone(),
            tallies: (0..workers).map(|_| Mutex::new(Tally::default())).collect(),
            differing: AtomicUsize::new(0),
            ended: OnceLock::new(),
            fault: OnceLock::new(),
        }
    }

    /// How it ended, once it has (whichever shadow ended last).
    pub fn ended(&self) -> Option<End> {
        self.ended.get().copied()
    }

    /// Whether its module faulted (not the host): it is never promoted then.
    pub fn module_faulted(&self) -> bool {
        self.fault.get() == Some(&true)
    }

    /// The shadow release's ETag: the one promotion must name, and the promoted release's.
    pub fn etag(&self) -> String {
        self.release.etag()
    }

    /// Counts worker `worker`'s batch of `packets`, judged `live` by the live release
    /// (named by `live_catalog`) and `shadow` by the shadow.
    pub(super) fn count(
        &self,
        worker: usize,
        packets: &[Packet],
        (live_catalog, live): (&Catalog, &[Verdict]),
        shadow: &[Verdict],
    ) {
        let Some(tally) = self.tallies.get(worker) else {
            return;
        };
        let mut tally = lock(tally);
        let tally = &mut *tally;
        let shadow_catalog = &self.release.catalog;
        tally.batches += 1;
        for ((packet, &l), &s) in packets.iter().zip(live).zip(shadow) {
            tally.packets += 1;
            tally.matrix[Outcome::of(l).index()][Outcome::of(s).index()] += 1;
            let same = if self.same_names {
                l == s
            } else {
                same_verdict((live_catalog, l), (shadow_catalog, s))
            };
            if same {
                continue;
            }
            tally.changed += 1;
            let dst = match (l, s) {
                (Verdict::Allow(a), Verdict::Allow(_)) => {
                    tally.dst_changed += 1;
                    Dst::Live(a.0)
                }
                (Verdict::Allow(a), _) => Dst::Live(a.0),
                (_, Verdict::Allow(b)) => Dst::Shadow(b.0),
                _ => Dst::None,
            };
            let key = pair_key(packet.src_vni, dst);
            let pairs = tally.pairs.len();
            match tally.pairs.get_mut(&key) {
                Some(n) => *n += 1,
                None if pairs < MAX_PAIRS => {
                    tally.pairs.insert(key, 1);
                }
                None => tally.other_pairs += 1,
            }
            // Samples are the only work here beyond counting; the first few only.
            if self.differing.load(Ordering::Relaxed) >= MAX_SAMPLES {
                continue;
            }
            let seq = self.differing.fetch_add(1, Ordering::Relaxed);
            if seq < MAX_SAMPLES {
                tally.samples.push(Sample {
                    seq,
                    packet: packet_text(packet),
                    src_vpc: self.src_name(live_catalog, packet.src_vni),
                    live: verdict_text(live_catalog, l),
                    shadow: verdict_text(shadow_catalog, s),
                });
            }
        }
    }

    /// The name of the VPC of `vni` under the live release.
    fn src_name(&self, live: &Catalog, vni: u32) -> Option<String> {
        let i = *self.live_vnis.get(&vni)?;
        live.vpcs.get(i).map(|v| v.name.clone())
    }

    /// The report: every worker's tally, merged.
    pub fn report(&self) -> Report {
        let mut totals = Totals {
            base_etag: self.base_etag.clone(),
            batches: 0,
            packets: 0,
            changed: 0,
            dst_changed: 0,
        };
        let mut matrix = [[0u64; Outcome::COUNT]; Outcome::COUNT];
        let mut pairs: HashMap<(String, String), u64> = HashMap::new();
        let mut samples = Vec::new();
        for tally in &self.tallies {
            let tally = lock(tally);
            totals.batches += tally.batches;
            totals.packets += tally.packets;
            totals.changed += tally.changed;
            totals.dst_changed += tally.dst_changed;
            for (row, from) in matrix.iter_mut().zip(&tally.matrix) {
                for (cell, n) in row.iter_mut().zip(from) {
                    *cell += n;
                }
            }
            let live = &self.base_catalog;
            for (&key, n) in &tally.pairs {
                let (vni, dst) = pair_of(key);
                let src = self
                    .src_name(live, vni)
                    .unwrap_or_else(|| format!("vni:{vni}"));
                let dst = match dst {
                    Dst::Live(i) => vpc_name(live, flowgate_policy::VpcId(i)),
                    Dst::Shadow(i) => vpc_name(&self.release.catalog, flowgate_policy::VpcId(i)),
                    Dst::None => None,
                };
                *pairs
                    .entry((src, dst.unwrap_or("-").to_owned()))
                    .or_default() += n;
            }
            if tally.other_pairs > 0 {
                *pairs.entry(("other".into(), "other".into())).or_default() += tally.other_pairs;
            }
            samples.extend(tally.samples.iter().cloned());
        }
        samples.sort_by_key(|s| s.seq);
        samples.truncate(MAX_SAMPLES);
        let mut top_pairs: Vec<(String, String, u64)> =
            pairs.into_iter().map(|((s, d), n)| (s, d, n)).collect();
        top_pairs.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        top_pairs.truncate(TOP_PAIRS);
        Report {
            totals,
            matrix,
            top_pairs,
            samples,
        }
    }
}

impl Gateway {
    /// Stages `request` as the shadow release: prepared, checked and refused exactly as
    /// [`Gateway::swap`] would (its `If-Match` names the live release, its approval writes
    /// the audit record), but not published. A shadow staged before is replaced once the new
    /// one is prepared; a refused one leaves it staged.
    pub fn stage_shadow(&self, request: SwapRequest<'_>) -> Result<Arc<Shadow>, SwapError> {
        let (origin, why) = operator_origin(&request);
        let _one_at_a_time = lock(&self.swap_lock);
        self.stage_locked(request, origin, why)
    }

    /// [`Gateway::stage_shadow`] for `origin`, the swap lock held.
    pub(super) fn stage_locked(
        &self,
        request: SwapRequest<'_>,
        origin: Origin,
        why: String,
    ) -> Result<Arc<Shadow>, SwapError> {
        let follows = request
            .module
            .and_then(|m: ModuleBytes<'_>| m.pulled)
            .map(|(asked, digest)| (asked.clone(), digest));
        let running = self.current();
        let release = match self.prepare_swap(request, origin, why) {
            Ok(release) => release,
            Err(e) => {
                let what = match origin {
                    Origin::TagWatch => "the tag watch's shadow",
                    _ => "staging a shadow",
                };
                self.note_refusal(what, &e);
                return Err(e);
            }
        };
        let shadow = Arc::new(Shadow::new(
            release,
            &running,
            self.options.workers,
            follows,
        ));
        self.end_shadow(None, End::Replaced, &running);
        lock(&self.shadow.write).take();
        self.shadow.staged.store(Some(shadow.clone()));
        let release = &shadow.release;
        tracing::info!(
            event = "shadow-staged",
            etag = %shadow.etag(),
            base_etag = %shadow.base_etag,
            cause = %release.cause,
            origin = %release.origin,
            module_sha256 = %release.module_digest(),
            config_sha256 = %release.config_digest,
            share = self.options.shadow_share,
            "shadow staged: {} ({}) is judged beside generation {} on a share of {} of the batches",
            shadow.etag(),
            release.cause,
            shadow.base_generation,
            self.options.shadow_share,
        );
        Ok(shadow)
    }

    /// The shadow staged now, if any.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.staged.load_full()
    }

    /// How the last shadow ended, when none is staged since.
    pub fn shadow_gone(&self) -> Option<Discarded> {
        lock(&self.shadow.write).clone()
    }

    /// Ends the staged shadow (when `which` is given, only if it is that one), saying `how`;
    /// `live` is the release serving now. Whether one ended.
    pub(super) fn end_shadow(&self, which: Option<&Arc<Shadow>>, how: End, live: &Release) -> bool {
        self.end_shadow_held(&mut lock(&self.shadow.write), which, how, live)
    }

    /// [`Gateway::end_shadow`] with the slot's lock held (`gone`).
    fn end_shadow_held(
        &self,
        gone: &mut MutexGuard<'_, Option<Discarded>>,
        which: Option<&Arc<Shadow>>,
        how: End,
        live: &Release,
    ) -> bool {
        let Some(shadow) = self.shadow.staged.load_full() else {
            return false;
        };
        if which.is_some_and(|w| !Arc::ptr_eq(w, &shadow)) {
            return false;
        }
        // Its end is set before it is unstaged: whoever sees it gone reads how.
        let _ = shadow.ended.set(how);
        self.shadow.staged.store(None);
        let totals = shadow.report().totals;
        let why = match how {
            End::Discarded => "an operator discarded it".to_owned(),
            End::Promoted => format!("promoted: generation {} serves", live.generation),
            End::Replaced => "another shadow was staged".to_owned(),
            End::LiveChanged => format!(
                "generation {} went live ({} by {}): the release it was compared against ({}) no longer serves",
                live.generation,
                live.cause,
                live.origin.who(),
                shadow.base_etag
            ),
            End::Fault => "its module failed".to_owned(),
            End::Refused => format!(
                "the tag watch's rollout gate refused it: {} of {} packets changed",
                totals.changed, totals.packets
            ),
            End::Unjudged => "the tag watch's rollout gate had nothing to go by: it judged no packet; it is staged again later".to_owned(),
            End::TagMoved => "the watched tag no longer names its digest, or the registry could not say so".to_owned(),
            End::WatchPaused => {
                "the tag watch that staged it was paused while it was judged".to_owned()
            }
            End::Unrecorded => "the tag watch's promotion of it could not be recorded; it is staged again later".to_owned(),
        };
        self.events.shadow_end(how);
        let log = |level_warn: bool| {
            let message = format!(
                "shadow {} ended ({how}): {why}; {} packets compared, {} changed",
                shadow.etag(),
                totals.packets,
                totals.changed
            );
            if level_warn {
                tracing::warn!(event = "shadow-ended", how = %how, etag = %shadow.etag(), "{message}");
            } else {
                tracing::info!(event = "shadow-ended", how = %how, etag = %shadow.etag(), "{message}");
            }
        };
        log(matches!(
            how,
            End::LiveChanged | End::Fault | End::Refused | End::Unjudged | End::Unrecorded
        ));
        **gone = Some(Discarded {
            how,
            why,
            etag: shadow.etag(),
            totals,
            unix_ms: unix_ms(),
        });
        // Its unused instances go back to the pool now; the workers let theirs go at their
        // next batch.
        lock(&shadow.release.spares).clear();
        true
    }

    /// A fault of the shadow's module (on a batch, or as a worker's instance of it started):
    /// counted, logged, and the shadow discarded. The live verdicts are not touched, and the
    /// fault does not count toward an auto-revert.
    pub(super) fn shadow_fault(&self, shadow: &Arc<Shadow>, fault: &PolicyFault) {
        self.events.shadow_fault(fault.reason());
        tracing::warn!(
            event = "shadow-fault",
            etag = %shadow.etag(),
            reason = fault.reason(),
            error = %fault,
            "the shadow {} failed ({}): {fault}; it is discarded",
            shadow.etag(),
            fault.reason()
        );
        // Set before the lock, which a promotion may hold: it checks this before it claims.
        let _ = shadow.fault.set(fault.is_module_fault());
        let live = self.current();
        self.end_shadow(Some(shadow), End::Fault, &live);
    }

    /// Discards the staged shadow, once `approval` lets it (the audit record); with `if_match`,
    /// only if it names that shadow, so that a discard meant for one shadow never ends another
    /// staged since (the tag watch's, say).
    pub fn discard_shadow(
        &self,
        if_match: Option<&str>,
        approval: Option<DiscardApproval<'_>>,
    ) -> Result<Arc<Shadow>, ShadowError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let Some(shadow) = self.shadow() else {
            let gone = self.shadow_gone().map(Box::new);
            return Err(ShadowError::None { gone });
        };
        if let Some(expected) = if_match.map(str::trim)
            && expected != "*"
            && !names(expected, &shadow.etag())
        {
            return Err(ShadowError::StaleShadow {
                expected: expected.to_owned(),
                staged: shadow.etag(),
            });
        }
        if let Some(approval) = approval {
            approval(&shadow).map_err(ShadowError::NotRecorded)?;
        }
        self.end_shadow(Some(&shadow), End::Discarded, &self.current());
        Ok(shadow)
    }

    /// Promotes the staged shadow: publishes exactly the release that was measured (its
    /// module, configuration, state and generation), while `if_match` names it and the live
    /// release is the one it was compared against. The release records the report's totals
    /// (cause `shadow-promote`). `approval` is a swap's: the audit record.
    pub fn promote_shadow(
        &self,
        if_match: Option<&str>,
        approval: Option<Approval<'_>>,
    ) -> Result<Arc<Release>, ShadowError> {
        let _one_at_a_time = lock(&self.swap_lock);
        let names = |etag: &str| if_match.is_some_and(|expected| names(expected, etag));
        let Some(shadow) = self.shadow() else {
            let gone = self.shadow_gone();
            // The shadow named was measured against a release that no longer serves.
            if let Some(gone) = gone.as_ref().filter(|g| g.how == End::LiveChanged)
                && names(&gone.etag)
            {
                return Err(ShadowError::StaleLive {
                    base: gone.totals.base_etag.clone(),
                    running: self.current().etag(),
                });
            }
            return Err(ShadowError::None {
                gone: gone.map(Box::new),
            });
        };
        let staged = shadow.etag();
        let Some(expected) = if_match.map(str::trim) else {
            return Err(ShadowError::NoIfMatch { staged });
        };
        if expected != "*" && !names(&staged) {
            return Err(ShadowError::StaleShadow {
                expected: expected.to_owned(),
                staged,
            });
        }
        self.promote_locked(&shadow, approval)
    }

    /// Promotes `shadow`, the staged one, the swap lock held: while the live release is the
    /// one it was compared against.
    pub(super) fn promote_locked(
        &self,
        shadow: &Arc<Shadow>,
        approval: Option<Approval<'_>>,
    ) -> Result<Arc<Release>, ShadowError> {
        let running = self.current();
        let generation = self.next_generation.load(Ordering::Relaxed);
        if running.etag() != shadow.base_etag || generation != shadow.release.generation {
            return Err(ShadowError::StaleLive {
                base: shadow.base_etag.clone(),
                running: running.etag(),
            });
        }
        // The slot stays locked from here until the shadow is claimed, so that a fault on a
        // worker cannot end it after the check: what is promoted is still staged.
        let mut gone = lock(&self.shadow.write);
        if shadow.fault.get().is_some() {
            self.end_shadow_held(&mut gone, Some(shadow), End::Fault, &running);
            return Err(ShadowError::Faulted);
        }
        if !self
            .shadow
            .staged
            .load()
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, shadow))
        {
            return Err(ShadowError::None {
                gone: gone.clone().map(Box::new),
            });
        }
        let report = shadow.report();
        let mut release = promoted(shadow, &report.totals);
        if let Some(approval) = approval {
            (approval.0)(&running, &release).map_err(ShadowError::NotRecorded)?;
        }
        // A fault on a worker while this held the slot (the approval writes to the disk): the
        // shadow's module failed, and is not promoted.
        if shadow.fault.get().is_some() {
            self.end_shadow_held(&mut gone, Some(shadow), End::Fault, &running);
            return Err(ShadowError::Faulted);
        }
        // Its unused instances serve the promoted release; a refused promotion keeps them.
        *release
            .spares
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) =
            std::mem::take(&mut *lock(&shadow.release.spares));
        self.end_shadow_held(&mut gone, Some(shadow), End::Promoted, &release);
        drop(gone);
        let follows = shadow.follows.as_ref().map(|(r, d)| (r, *d));
        let release = self.publish(release, 0, follows);
        tracing::info!(
            event = "swap",
            generation = release.generation,
            cause = %release.cause,
            origin = %release.origin,
            why = %release.why,
            shadow_packets = report.totals.packets,
            shadow_changed = report.totals.changed,
            shadow_dst_changed = report.totals.dst_changed,
            base_etag = %report.totals.base_etag,
            module_sha256 = %release.module_digest(),
            config_sha256 = %release.config_digest,
            "swap: generation {} is live ({}) by {}: {}",
            release.generation,
            release.cause,
            release.origin,
            release.why,
        );
        Ok(release)
    }
}

/// Whether the `If-Match` value `expected` (a list of strong ETags) names `etag`.
fn names(expected: &str, etag: &str) -> bool {
    expected
        .split(',')
        .map(str::trim)
        .filter(|t| !t.starts_with("W/"))
        .any(|t| t.trim_matches('"') == etag)
}

/// The release a shadow is promoted to: the shadow's own, recording the report's totals (its
/// instances are moved over once the promotion is approved).
fn promoted(shadow: &Shadow, totals: &Totals) -> Release {
    let r = &shadow.release;
    Release {
        generation: r.generation,
        cause: Cause::ShadowPromote,
        origin: r.origin,
        why: format!(
            "the shadow staged by {} ({}) promoted after {} packets compared with generation {}: {} changed, {} to another destination VPC",
            r.origin.who(),
            r.cause,
            totals.packets,
            shadow.base_generation,
            totals.changed,
            totals.dst_changed
        ),
        module: r.module.clone(),
        source: r.source.clone(),
        signer: r.signer.clone(),
        info: r.info.clone(),
        config: r.config.clone(),
        config_digest: r.config_digest.clone(),
        catalog: r.catalog.clone(),
        peerings: r.peerings,
        prepared: r.prepared,
        canary: r.canary.clone(),
        canary_verdicts: r.canary_verdicts.clone(),
        plan: r.plan.clone(),
        spares: Mutex::new(Vec::new()),
        shadow: Some(totals.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pair's key gives back its source VNI and destination, at the ends of their ranges.
    #[test]
    fn pair_keys_read_back() {
        for vni in [0, 1, 0xff_ffff, u32::MAX] {
            for dst in [
                Dst::Live(0),
                Dst::Live(7),
                Dst::Shadow(0),
                Dst::Shadow(4095),
                Dst::Live(u32::MAX / 2 - 1),
                Dst::None,
            ] {
                assert_eq!(pair_of(pair_key(vni, dst)), (vni, dst), "{vni} {dst:?}");
            }
        }
        assert_eq!(pair_of(pair_key(3, Dst::Shadow(u32::MAX))), (3, Dst::None));
    }

    /// A budget admits a shadow that changed at most what it says, and never one that judged
    /// no packet.
    #[test]
    fn a_budget_admits_what_it_says_and_never_an_unjudged_shadow() {
        let totals = |packets, changed| Totals {
            base_etag: String::new(),
            batches: 1,
            packets,
            changed,
            dst_changed: 0,
        };
        let cases = [
            (Budget::Packets(0), totals(100, 0), true),
            (Budget::Packets(0), totals(100, 1), false),
            (Budget::Packets(3), totals(100, 3), true),
            (Budget::Packets(3), totals(100, 4), false),
            (Budget::Packets(3), totals(0, 0), false),
            (Budget::Share(0.01), totals(1000, 10), true),
            (Budget::Share(0.01), totals(1000, 11), false),
            (Budget::Share(1.0), totals(5, 5), true),
            (Budget::Share(1.0), totals(0, 0), false),
        ];
        for (budget, totals, admitted) in cases {
            assert_eq!(budget.admits(&totals), admitted, "{budget} with {totals:?}");
        }
    }

    /// Verdicts named by two catalogs are the same when they name the same VPCs.
    #[test]
    fn verdicts_compare_by_name_across_catalogs() {
        use flowgate_policy::{CandidatesId, VpcEntry, VpcId};
        let vpc = |name: &str, vni| VpcEntry {
            name: name.into(),
            vni,
        };
        let live = Catalog {
            vpcs: vec![vpc("a", 1), vpc("b", 2), vpc("c", 3)],
            candidate_sets: vec![vec![VpcId(0), VpcId(2)]],
        };
        let shadow = Catalog {
            vpcs: vec![vpc("a", 1), vpc("c", 3)],
            candidate_sets: vec![vec![VpcId(0), VpcId(1)]],
        };
        let same = |l, s| same_verdict((&live, l), (&shadow, s));
        assert!(same(Verdict::Allow(VpcId(2)), Verdict::Allow(VpcId(1))));
        assert!(!same(Verdict::Allow(VpcId(1)), Verdict::Allow(VpcId(1))));
        let ambiguous = Verdict::AllowAmbiguous(CandidatesId(0));
        assert!(same(ambiguous, ambiguous));
        assert!(!same(Verdict::Allow(VpcId(9)), Verdict::Allow(VpcId(9))));
        let drop = |r| Verdict::Drop(r);
        assert!(same(drop(DropReason::Denied), drop(DropReason::Denied)));
        assert!(!same(
            drop(DropReason::Denied),
            drop(DropReason::SourceNotExposed)
        ));
    }
}
