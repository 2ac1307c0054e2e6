//! flowgate's benchmarks live in this package's `[[bench]]` targets; run them with
//! `cargo bench -p flowgate-benches`. See `BENCHMARKS.md` at the top of the repository. This
//! library holds what the benchmarks share: the same input for every comparison.

use flowgate_policy::synth::{self, Scale};
use flowgate_policy::{Config, Packet, Verdict};

/// Packets drawn for each benchmark configuration.
pub const PACKETS: usize = 4096;

/// A generated configuration of `peerings` peerings (about 20 peers per VPC) as YAML, read,
/// and [`PACKETS`] packets drawn from it. The same seeds everywhere, so every benchmark judges
/// the same input.
///
/// # Panics
/// If the generator made a configuration the library refuses (a bug in one of them).
pub fn setup(peerings: usize) -> (String, Config, Vec<Packet>) {
    let yaml = synth::config_yaml(Scale::with_peerings(peerings, 42));
    let config = flowgate_policy::parse(&yaml, None)
        .unwrap_or_else(|e| panic!("generated config refused: {e}"));
    let packets = synth::packets(&config, PACKETS, 7);
    (yaml, config, packets)
}

/// How many of `verdicts` let their packet through: the answer each timed run checks.
pub fn allowed(verdicts: &[Verdict]) -> usize {
    verdicts
        .iter()
        .filter(|v| !matches!(v, Verdict::Drop(_)))
        .count()
}
