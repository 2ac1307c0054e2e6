//! The gateway's metrics in the Prometheus text exposition format, and the batch latency
//! histogram behind them.

use std::fmt::Write;

use crate::FaultKind;
use crate::gateway::{
    AdminRefusal, Cause, Gateway, Outcome, Pull, Refusal, RollbackCause, ShadowEnd,
};
use crate::oci::SignatureCheck;

/// A label value, escaped as the exposition format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A label set's names, for a help text: "a, b, c".
fn names<L: std::fmt::Display>(all: &[L]) -> String {
    let names: Vec<String> = all.iter().map(ToString::to_string).collect();
    names.join(", ")
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
    for (verdict, n) in counters.by_kind() {
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
                &format!("Releases published, by cause ({}).", names(&Cause::ALL)),
                &events.swaps,
            ),
            (
                "flowgate_swap_refusals_total",
                "reason",
                &format!("Swaps refused, by reason ({}).", names(&Refusal::ALL)),
                &events.refusals,
            ),
            (
                "flowgate_rollbacks_total",
                "cause",
                &format!("Rollbacks, by cause ({}).", names(&RollbackCause::ALL)),
                &events.rollbacks,
            ),
            (
                "flowgate_faults_total",
                "reason",
                &format!(
                    "Batches a module failed on, by reason ({}).",
                    names(&FaultKind::ALL)
                ),
                &events.faults,
            ),
            (
                "flowgate_pulls_total",
                "result",
                &format!("Registry pulls, by result ({}).", names(&Pull::ALL)),
                &events.pulls,
            ),
            (
                "flowgate_signature_checks_total",
                "result",
                &format!(
                    "Module signature checks, by result ({}).",
                    names(&SignatureCheck::ALL)
                ),
                &events.signatures,
            ),
            (
                "flowgate_host_faults_total",
                "reason",
                &format!(
                    "Faults that were not the module's own (they do not count toward an auto-revert), by reason ({}).",
                    names(&FaultKind::ALL)
                ),
                &events.host_faults,
            ),
            (
                "flowgate_shadow_ends_total",
                "how",
                &format!(
                    "Shadow releases ended, by how ({}).",
                    names(&ShadowEnd::ALL)
                ),
                &events.shadow_ends,
            ),
            (
                "flowgate_shadow_faults_total",
                "reason",
                &format!(
                    "Batches a shadow module failed on (each discards the shadow; none counts toward an auto-revert), by reason ({}).",
                    names(&FaultKind::ALL)
                ),
                &events.shadow_faults,
            ),
            (
                "flowgate_admin_refusals_total",
                "reason",
                &format!(
                    "Admin requests refused before they reached the gateway, by reason ({}).",
                    names(&AdminRefusal::ALL)
                ),
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
        "flowgate_instance_starts_total",
        "counter",
        "Module instances that took a configuration, by how: configure (parsed, validated and built: once a release, unless the module hands no state over; explain configures too) or adopt (the state a configured instance built).",
    );
    let starts = gateway.starts();
    let _ = writeln!(
        out,
        "flowgate_instance_starts_total{{how=\"configure\"}} {}\nflowgate_instance_starts_total{{how=\"adopt\"}} {}",
        starts.configured(),
        starts.adopted()
    );
    family(
        &mut out,
        "flowgate_release_state_bytes",
        "gauge",
        "Bytes of the state the serving release's instances start from (held once, whatever the number of workers); 0 when each configures.",
    );
    let _ = writeln!(
        out,
        "flowgate_release_state_bytes {}",
        release.prepared.state_bytes
    );

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
        "flowgate_module_info{{name=\"{}\",version=\"{}\",wit_version=\"{}\",sha256=\"{}\",config_sha256=\"{}\",generation=\"{}\",reference=\"{}\",origin=\"{}\"}} 1",
        label(&release.info.name),
        label(&release.info.version),
        label(&release.info.wit_version),
        release.module_digest(),
        release.config_digest,
        release.generation,
        label(release.source.as_deref().unwrap_or_default()),
        release.origin
    );
    family(
        &mut out,
        "flowgate_module_signer_info",
        "gauge",
        "The key that signed the module being served (absent when it is unsigned).",
    );
    if let Some(signer) = &release.signer {
        let _ = writeln!(
            out,
            "flowgate_module_signer_info{{key=\"{}\",fingerprint=\"{}\",identity=\"{}\"}} 1",
            label(signer.key()),
            signer.fingerprint(),
            label(signer.identity()),
        );
    }
    if let Some(watch) = gateway.watch_status() {
        family(
            &mut out,
            "flowgate_watch_paused",
            "gauge",
            "1 while the tag watch is paused (an operator's change pinned the gateway), else 0.",
        );
        let _ = writeln!(
            out,
            "flowgate_watch_paused{{reference=\"{}\"}} {}",
            label(&watch.reference),
            u8::from(watch.paused.is_some())
        );
        family(
            &mut out,
            "flowgate_watch_quarantined",
            "gauge",
            "Digests the tag watch will not take again until the tag moves.",
        );
        let _ = writeln!(
            out,
            "flowgate_watch_quarantined{{reference=\"{}\"}} {}",
            label(&watch.reference),
            watch.quarantined.len()
        );
    }
    render_shadow(&mut out, gateway);
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

/// The staged shadow's report: its matrix of live by shadow outcomes, changed packets and
/// batches (no series while no shadow is staged; every cell while one is).
fn render_shadow(out: &mut String, gateway: &Gateway) {
    let shadow = gateway.shadow();
    family(
        out,
        "flowgate_shadow_staged",
        "gauge",
        "1 while a shadow release is staged and judges copies of live batches, else 0.",
    );
    let _ = writeln!(out, "flowgate_shadow_staged {}", u8::from(shadow.is_some()));
    let Some(shadow) = shadow else { return };
    let report = shadow.report();
    family(
        out,
        "flowgate_shadow_packets_total",
        "counter",
        &format!(
            "Packets judged by the live release and the staged shadow, by the live outcome and the shadow's ({}).",
            names(&Outcome::ALL)
        ),
    );
    for live in Outcome::ALL {
        for judged in Outcome::ALL {
            let n = report.matrix[live.index()][judged.index()];
            let _ = writeln!(
                out,
                "flowgate_shadow_packets_total{{live=\"{live}\",shadow=\"{judged}\"}} {n}"
            );
        }
    }
    let totals = &report.totals;
    for (name, help, n) in [
        (
            "flowgate_shadow_changed_total",
            "Packets the staged shadow judges otherwise than the live release.",
            totals.changed,
        ),
        (
            "flowgate_shadow_dst_changed_total",
            "Packets both releases allow, to another destination VPC under the shadow.",
            totals.dst_changed,
        ),
        (
            "flowgate_shadow_batches_total",
            "Batches judged with the staged shadow too.",
            totals.batches,
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
