//! The gateway's metrics in the Prometheus text exposition format, and the batch latency
//! histogram behind them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::gateway::Gateway;

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 14] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0,
];

/// A lock-free latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (the last one is +Inf), not cumulative.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
    max_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The longest observation.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bound) in BOUNDS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

/// A label value, escaped as the exposition format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Every metric of the gateway.
pub fn render(gateway: &Gateway) -> String {
    let mut out = String::new();
    let counters = gateway.counters();
    let release = gateway.current();

    family(
        &mut out,
        "flowgate_verdicts_total",
        "counter",
        "Packets judged, by verdict.",
    );
    for (verdict, n) in [
        ("allow", counters.allowed),
        ("allow-ambiguous", counters.ambiguous),
        ("drop", counters.dropped),
    ] {
        let _ = writeln!(out, "flowgate_verdicts_total{{verdict=\"{verdict}\"}} {n}");
    }
    family(
        &mut out,
        "flowgate_drops_total",
        "counter",
        "Dropped packets, by reason.",
    );
    for (reason, n) in &counters.drops {
        let _ = writeln!(
            out,
            "flowgate_drops_total{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    family(
        &mut out,
        "flowgate_forwarded_total",
        "counter",
        "Packets forwarded, by destination VPC.",
    );
    for (vpc, n) in &counters.forwarded {
        let _ = writeln!(
            out,
            "flowgate_forwarded_total{{vpc=\"{}\"}} {n}",
            label(vpc)
        );
    }
    family(
        &mut out,
        "flowgate_batches_total",
        "counter",
        "Policy calls made.",
    );
    let _ = writeln!(out, "flowgate_batches_total {}", counters.batches);
    family(
        &mut out,
        "flowgate_unsent_total",
        "counter",
        "Allowed packets a live source could not send on (no endpoint for the VPC, or the send failed).",
    );
    let _ = writeln!(out, "flowgate_unsent_total {}", counters.unsent);

    {
        let events = gateway.events();
        let groups = [
            (
                "flowgate_swaps_total",
                "cause",
                "Releases published, by cause.",
                &events.swaps,
            ),
            (
                "flowgate_swap_refusals_total",
                "reason",
                "Swaps refused, by reason.",
                &events.refusals,
            ),
            (
                "flowgate_rollbacks_total",
                "cause",
                "Rollbacks, by cause (operator or auto).",
                &events.rollbacks,
            ),
            (
                "flowgate_faults_total",
                "reason",
                "Batches a module failed on, by reason.",
                &events.faults,
            ),
            (
                "flowgate_admin_refusals_total",
                "reason",
                "Admin requests refused before they reached the gateway (unauthorized, truncated-body, timeout, ...).",
                &events.admin_refusals,
            ),
        ];
        for (name, key, help, map) in groups {
            family(&mut out, name, "counter", help);
            for (value, n) in map {
                let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {n}", label(value));
            }
        }
        family(
            &mut out,
            "flowgate_auto_revert_failures_total",
            "counter",
            "Auto-reverts that failed (each is tried again after a backoff).",
        );
        let _ = writeln!(
            out,
            "flowgate_auto_revert_failures_total {}",
            events.revert_failures
        );
    }

    family(
        &mut out,
        "flowgate_batch_seconds",
        "histogram",
        "Time to judge one batch.",
    );
    gateway
        .batch_latency
        .render(&mut out, "flowgate_batch_seconds");

    family(
        &mut out,
        "flowgate_module_info",
        "gauge",
        "The release being served.",
    );
    let _ = writeln!(
        out,
        "flowgate_module_info{{name=\"{}\",version=\"{}\",wit_version=\"{}\",sha256=\"{}\",config_sha256=\"{}\",generation=\"{}\"}} 1",
        label(&release.info.name),
        label(&release.info.version),
        label(&release.info.wit_version),
        release.module_digest(),
        release.config_digest,
        release.generation
    );
    family(
        &mut out,
        "flowgate_generation",
        "gauge",
        "Generation of the release being served.",
    );
    let _ = writeln!(out, "flowgate_generation {}", release.generation);
    family(
        &mut out,
        "flowgate_uptime_seconds",
        "gauge",
        "Time since the gateway started.",
    );
    let _ = writeln!(
        out,
        "flowgate_uptime_seconds {:.3}",
        gateway.uptime().as_secs_f64()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        h.render(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"));
        assert_eq!(h.max(), Duration::from_secs(3));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
