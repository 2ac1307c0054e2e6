//! flowgate's benchmarks live in this package's `[[bench]]` targets; run them with
//! `cargo bench -p flowgate-benches`. See `BENCHMARKS.md` at the top of the repository. This
//! library holds what the benchmarks share: the same input for every comparison.
//!
//! Two kinds of input:
//! - **realistic** ([`Realistic`]): a gateway-shaped workload (`synth::Gateway`, IPv4 or
//!   dual-stack) and a pool of [`POOL`] distinct packets that a benchmark walks through batch
//!   after batch, so no packet comes back before a million others have passed and the branch
//!   predictor learns nothing;
//! - **repeat** ([`setup`]): the same [`PACKETS`] packets judged again and again. The CPU
//!   learns their search paths, so these figures are a best case.

use flowgate_policy::packed::Columns;
use flowgate_policy::synth::{self, Gateway, GatewayShape, Scale, Traffic};
use flowgate_policy::{Config, Packet, Table, Verdict, oracle};

/// Packets drawn for each repeat (best-case) benchmark configuration.
pub const PACKETS: usize = 4096;

/// Distinct packets in a realistic pool.
pub const POOL: usize = 1 << 20;

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

/// Packets of a realistic pool whose verdicts are checked against the oracle's before any
/// timed run.
pub const ORACLE_SAMPLE: usize = 4096;

/// A gateway-shaped workload and its pool of distinct packets, walked batch by batch.
pub struct Realistic {
    /// The configuration, as YAML.
    pub yaml: String,
    /// The table built from it.
    pub table: Table,
    /// [`POOL`] distinct packets, in the order the generator drew them.
    pub pool: Vec<Packet>,
    /// Allowed packets in each batch of the pool, as the native table judges them: the answer
    /// each timed batch checks.
    expected: Vec<usize>,
    batch: usize,
}

impl Realistic {
    /// The workload of `peerings` peerings (100 VPCs up to 1,000, 250 up to 5,000), with or
    /// without port ranges, cut into batches of `batch`.
    ///
    /// # Panics
    /// If the generator made a configuration the library refuses (a bug in one of them).
    pub fn new(peerings: usize, ports: bool, batch: usize) -> Self {
        Self::of(
            GatewayShape::with_peerings(peerings, ports, 42),
            Traffic::All,
            batch,
        )
    }

    /// The dual-stack workload of `peerings` peerings (120 VPCs up to 1,000, 300 up to 5,000,
    /// a fifth of the entries with port ranges), its pool the packets of `traffic`, cut into
    /// batches of `batch`. One configuration whatever the traffic.
    ///
    /// # Panics
    /// If the generator made a configuration the library refuses (a bug in one of them).
    pub fn dual(peerings: usize, traffic: Traffic, batch: usize) -> Self {
        Self::of(GatewayShape::dual(peerings, true, 42), traffic, batch)
    }

    /// The workload of `shape`, its pool the packets of `traffic`, cut into batches of
    /// `batch`.
    ///
    /// # Panics
    /// If the generator made a configuration the library refuses (a bug in one of them), or
    /// the table and the oracle disagree on one of the pool's first [`ORACLE_SAMPLE`] packets.
    pub fn of(shape: GatewayShape, traffic: Traffic, batch: usize) -> Self {
        let mut gateway = Gateway::new(shape);
        let config = flowgate_policy::parse(gateway.yaml(), None)
            .unwrap_or_else(|e| panic!("generated config refused: {e}"));
        let table =
            Table::build(&config).unwrap_or_else(|e| panic!("generated table refused: {e}"));
        let pool = gateway.packets_of(traffic, POOL);
        // The native table's answers are the timed runs' references: checked first against
        // the oracle's on the pool's first packets.
        for packet in &pool[..ORACLE_SAMPLE] {
            let got = oracle::from_table(&table, table.lookup(packet));
            let want = oracle::verdict(&config, packet);
            assert!(
                got == want,
                "{packet:?}: the table says {got:?}, the oracle {want:?}"
            );
        }
        let mut verdicts = vec![Verdict::default(); batch];
        let expected = pool
            .chunks_exact(batch)
            .map(|chunk| {
                table.lookup_batch(chunk, &mut verdicts);
                allowed(&verdicts)
            })
            .collect();
        Realistic {
            yaml: gateway.yaml().to_owned(),
            table,
            pool,
            expected,
            batch,
        }
    }

    /// The pool's batches with the allowed count each must give, over and over.
    pub fn batches(&self) -> impl Iterator<Item = (&[Packet], usize)> + '_ {
        self.pool
            .chunks_exact(self.batch)
            .zip(self.expected.iter().copied())
            .cycle()
    }

    /// The pool's batches laid out in columns, as a dataplane's decoder writes them, each with
    /// the allowed count it must give (laid out once, outside any timed loop).
    pub fn column_batches(&self) -> Vec<(Columns, usize)> {
        self.pool
            .chunks_exact(self.batch)
            .zip(self.expected.iter().copied())
            .map(|(chunk, expected)| (columns(chunk), expected))
            .collect()
    }
}

/// `packets` laid out in columns.
///
/// # Panics
/// If there are more packets than a batch holds.
pub fn columns(packets: &[Packet]) -> Columns {
    let mut columns = Columns::with_capacity(packets.len());
    columns
        .encode(packets)
        .unwrap_or_else(|e| panic!("no batch of these packets: {e}"));
    columns
}

/// How many of `verdicts` let their packet through: the answer each timed run checks.
pub fn allowed(verdicts: &[Verdict]) -> usize {
    verdicts
        .iter()
        .filter(|v| !matches!(v, Verdict::Drop(_)))
        .count()
}
