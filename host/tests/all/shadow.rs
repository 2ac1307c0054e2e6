//! Shadow releases on a live gateway: what a staged shadow reports is checked against the
//! native library run on both configurations, independently of the shadow's code; a shadow
//! that fails is discarded without touching the live verdicts; promotion publishes what was
//! measured, and only while what it was measured against still serves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowgate_host::admin::{AdminOptions, AdminServer, AuditLog, Client, Endpoint};
use flowgate_host::dataplane::Counters;
use flowgate_host::gateway::{Gateway, Options, Outcome};
use flowgate_host::io::{Port, Trace};
use flowgate_host::wasm::Limits;
use flowgate_host::{NativePolicy, Policy};
use flowgate_policy::json::parse_packet_text;
use flowgate_policy::synth::{self, Scale};
use flowgate_policy::{Packet, Verdict};
use flowgate_test_guests as guests;
use serde_json::Value;

/// Packets each worker's source hands out per run.
const PER_WORKER: u64 = 256 * 24;
/// Where worker `id`'s source starts in the trace.
const STRIDE: usize = 977;

fn config() -> String {
    synth::config_yaml(Scale::with_peerings(60, 11))
}

fn traffic(config: &str, count: usize) -> Vec<Packet> {
    synth::packets(&flowgate_policy::parse(config, None).unwrap(), count, 12)
}

/// `config` without its `Peering` document `which` (counting the peerings from 0).
fn without_peering(config: &str, which: usize) -> String {
    let mut seen = 0;
    let mut out = String::new();
    for doc in config.split("---\n") {
        if doc.starts_with("kind: Peering") {
            seen += 1;
            if seen - 1 == which {
                continue;
            }
        }
        if !doc.trim().is_empty() {
            out.push_str(doc);
            out.push_str("---\n");
        }
    }
    assert_eq!(out.len() < config.len(), seen > which, "peering {which}");
    out
}

/// The packets worker `id`'s source hands out in a run of `PER_WORKER` packets.
fn stream(packets: &[Packet], id: usize) -> Vec<Packet> {
    let mut source = Trace::new(packets.into(), id * STRIDE, 0, Some(PER_WORKER));
    let mut all = Vec::new();
    while source.fill(&mut all, 256) > 0 {}
    all
}

/// What the native library judges `packets` under `config`, with its verdicts' spec notation.
fn native(config: &str, packets: &[Packet]) -> (NativePolicy, Vec<Verdict>) {
    let mut policy = NativePolicy::new(config, None).unwrap();
    let mut out = vec![Verdict::default(); packets.len()];
    for (chunk, out) in packets.chunks(256).zip(out.chunks_mut(256)) {
        policy.judge(chunk, out).unwrap();
    }
    (policy, out)
}

/// The counters the native library makes of `packets` under `config`.
fn native_counters(config: &str, packets: &[Packet]) -> Counters {
    let mut policy = NativePolicy::new(config, None).unwrap();
    let mut total = Counters::default();
    flowgate_host::dataplane::judge_all(&mut policy, packets, 256, &mut total, |_, _| {}).unwrap();
    total
}

/// The report the native library says a shadow of `new` beside `old` makes of `packets`:
/// packets, changed (another verdict in the spec's notation), allowed to another VPC, and the
/// live by shadow matrix.
struct Expected {
    packets: u64,
    changed: u64,
    dst_changed: u64,
    matrix: BTreeMap<(&'static str, &'static str), u64>,
    pairs: HashMap<(String, String), u64>,
}

fn expected(old: &str, new: &str, packets: &[Packet]) -> Expected {
    let (live, l) = native(old, packets);
    let (shadow, s) = native(new, packets);
    let (lc, sc) = (live.catalog(), shadow.catalog());
    let mut e = Expected {
        packets: packets.len() as u64,
        changed: 0,
        dst_changed: 0,
        matrix: BTreeMap::new(),
        pairs: HashMap::new(),
    };
    for ((p, &l), &s) in packets.iter().zip(&l).zip(&s) {
        *e.matrix
            .entry((Outcome::of(l).as_str(), Outcome::of(s).as_str()))
            .or_default() += 1;
        if lc.verdict_text(l) == sc.verdict_text(s) {
            continue;
        }
        e.changed += 1;
        let dst = match (l, s) {
            (Verdict::Allow(a), Verdict::Allow(_)) => {
                e.dst_changed += 1;
                lc.vpc(a).name.clone()
            }
            (Verdict::Allow(a), _) => lc.vpc(a).name.clone(),
            (_, Verdict::Allow(b)) => sc.vpc(b).name.clone(),
            _ => "-".into(),
        };
        let src = (lc.vpcs.iter().find(|v| v.vni == p.src_vni))
            .map_or(format!("vni:{}", p.src_vni), |v| v.name.clone());
        *e.pairs.entry((src, dst)).or_default() += 1;
    }
    e
}

/// Runs every worker of `gateway` over its stream of `packets` (`PER_WORKER` each), then
/// waits (bounded) until every source is dry.
fn run(gateway: &Arc<Gateway>, packets: &[Packet]) {
    let packets: Arc<[Packet]> = packets.into();
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..gateway.options().workers)
        .map(|id| {
            let (gateway, stop, packets) = (gateway.clone(), stop.clone(), packets.clone());
            std::thread::spawn(move || {
                let mut source = Trace::new(packets, id * STRIDE, 0, Some(PER_WORKER));
                gateway.run_worker(id, &mut source, &stop);
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while handles.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
}

fn options(workers: usize) -> Options {
    Options {
        workers,
        record_batches: true,
        shadow_share: 1.0,
        ..Options::default()
    }
}

/// The peering of `config` whose removal changes the most of `packets` (among the first 20).
fn busiest_peering(config: &str, packets: &[Packet]) -> String {
    let best = (0..20)
        .map(|i| {
            (
                expected(config, &without_peering(config, i), packets).changed,
                i,
            )
        })
        .max()
        .unwrap();
    assert!(best.0 > 0, "some peering carries the traffic");
    without_peering(config, best.1)
}

fn counters_without_batches(mut c: Counters) -> Counters {
    c.batches = 0;
    c
}

#[test]
fn a_removed_peering_is_reported_as_the_native_library_judges_it_and_promoted_whole() {
    let old = config();
    let packets = traffic(&old, 20_000);
    let new = busiest_peering(&old, &packets);
    let gateway = crate::gateway_with(&old, Limits::default(), options(2));
    let (_admin, client) = crate::admin_on_socket(&gateway);

    let staged = client.stage_config(&new, None).unwrap();
    assert_eq!(staged.status, 200, "{}", staged.body);
    let etag = staged.body["shadow"]["etag"].as_str().unwrap().to_owned();
    assert_eq!(staged.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(
        staged.body["shadow"]["base_etag"].as_str(),
        Some(gateway.current().etag().as_str())
    );
    assert_eq!(gateway.current().generation, 1, "a shadow is not published");

    run(&gateway, &packets);
    let sent: Vec<Packet> = (0..2).flat_map(|id| stream(&packets, id)).collect();
    let want = expected(&old, &new, &sent);
    assert!(want.changed > 0);

    // The live counters are what the live release alone makes of the traffic.
    assert_eq!(
        counters_without_batches(gateway.counters()),
        counters_without_batches(native_counters(&old, &sent)),
        "the shadow changes nothing live"
    );

    let report = client.shadow().unwrap();
    assert_eq!(report.status, 200, "{}", report.body);
    let r = &report.body["shadow"]["report"];
    assert_eq!(r["packets"].as_u64(), Some(want.packets), "{r}");
    assert_eq!(r["changed"].as_u64(), Some(want.changed), "{r}");
    assert_eq!(r["dst_changed"].as_u64(), Some(want.dst_changed), "{r}");
    let mut matrix = BTreeMap::new();
    for (live, row) in r["matrix"].as_object().unwrap() {
        for (judged, n) in row.as_object().unwrap() {
            let live = Outcome::from_name(live).unwrap().as_str();
            let judged = Outcome::from_name(judged).unwrap().as_str();
            matrix.insert((live, judged), n.as_u64().unwrap());
        }
    }
    assert_eq!(matrix, want.matrix);
    // The top pairs are the pairs with the most changed packets, with their counts.
    let mut pairs: Vec<(u64, String, String)> = want
        .pairs
        .iter()
        .map(|((s, d), n)| (*n, s.clone(), d.clone()))
        .collect();
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2))));
    let top: Vec<(u64, String, String)> = r["top_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_owned();
            (p["changed"].as_u64().unwrap(), s("src_vpc"), s("dst_vpc"))
        })
        .collect();
    assert_eq!(top, pairs[..pairs.len().min(10)]);
    // Each sample is a packet the two configurations judge as the sample says.
    let samples = r["samples"].as_array().unwrap();
    assert_eq!(samples.len() as u64, want.changed.min(32));
    let (mut live, _) = native(&old, &[]);
    let (mut shadow, _) = native(&new, &[]);
    for sample in samples {
        let text = sample["packet"].as_str().unwrap();
        let packet = parse_packet_text(text, live.catalog()).unwrap();
        let mut v = [Verdict::default()];
        live.judge(&[packet], &mut v).unwrap();
        assert_eq!(
            sample["live"].as_str(),
            Some(live.catalog().verdict_text(v[0]).as_str())
        );
        shadow.judge(&[packet], &mut v).unwrap();
        let text = shadow.catalog().verdict_text(v[0]);
        assert_eq!(sample["shadow"].as_str(), Some(text.as_str()), "{sample}");
    }
    let metrics = client.metrics().unwrap();
    let drop_dst = "drop(destination-not-exposed)";
    let allowed_to_dropped = want.matrix.get(&("allow", drop_dst)).copied().unwrap_or(0);
    assert!(
        metrics.contains(&format!(
            "flowgate_shadow_packets_total{{live=\"allow\",shadow=\"{drop_dst}\"}} {allowed_to_dropped}\n"
        )),
        "{metrics}"
    );

    // Promotion publishes the staged release, with the report's totals.
    let promoted = client.promote_shadow(&etag).unwrap();
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    let release = gateway.current();
    assert_eq!(
        release.etag(),
        etag,
        "exactly the release that was measured"
    );
    assert_eq!(release.cause.as_str(), "shadow-promote");
    assert_eq!(*release.config, *new);
    let totals = release.shadow.as_ref().unwrap();
    assert_eq!(
        (totals.packets, totals.changed),
        (want.packets, want.changed)
    );
    let status = client.status().unwrap().body;
    assert_eq!(status["cause"], "shadow-promote");
    assert_eq!(status["shadow"]["changed"].as_u64(), Some(want.changed));
    assert_eq!(
        client.shadow().unwrap().body["discarded"]["how"],
        "promoted"
    );

    // The new verdicts are live, and no packet goes unjudged.
    let before = gateway.counters();
    run(&gateway, &packets);
    let mut after = gateway.counters();
    let mut expect = native_counters(&new, &sent);
    expect.merge(&before);
    after.batches = 0;
    expect.batches = 0;
    assert_eq!(
        after, expect,
        "the promoted release judges what the new configuration says"
    );
    let records = gateway.records();
    assert!(records.iter().all(|r| r.verdicts == r.packets));
    let judged: usize = records.iter().map(|r| r.packets).sum();
    assert_eq!(
        judged,
        2 * sent.len(),
        "every packet of both runs was judged"
    );
    assert!(
        records.iter().any(|r| r.generation == release.generation),
        "{records:?}"
    );
}

/// A shadow whose module fails on live traffic is discarded; the live verdicts and counters
/// are exactly those of the live release, with no fault counted against it.
fn a_failing_shadow_is_discarded(guest: &[u8], trigger: u16, reason: &str, limits: Limits) {
    let config = config();
    let mut packets = traffic(&config, 20_000);
    for (i, p) in packets.iter_mut().enumerate() {
        if i % 1500 == 700 {
            *p = Packet::tcp(p.src_vni, p.src, trigger, p.dst, 80);
        }
    }
    let gateway = crate::gateway_with(&config, limits, options(1));
    let (_admin, client) = crate::admin_on_socket(&gateway);
    let staged = client.stage_module(guest, None, None, None).unwrap();
    assert_eq!(staged.status, 200, "{}", staged.body);
    run(&gateway, &packets);
    let gone = client.shadow().unwrap();
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert_eq!(gone.body["discarded"]["how"], "fault", "{}", gone.body);
    let events = gateway.events();
    assert_eq!(events.shadow_faults.get(reason), Some(&1), "{events:?}");
    assert!(events.faults.is_empty(), "no live fault: {events:?}");
    assert!(events.rollbacks.is_empty());
    drop(events);
    let sent = stream(&packets, 0);
    assert_eq!(
        counters_without_batches(gateway.counters()),
        counters_without_batches(native_counters(&config, &sent)),
        "the live verdicts are untouched"
    );
    assert_eq!(gateway.current().generation, 1);
    assert_eq!(client.promote_shadow("*").unwrap().status, 409);
}

#[test]
fn a_trapping_shadow_is_discarded_and_the_live_verdicts_are_untouched() {
    a_failing_shadow_is_discarded(
        guests::TRAP,
        guests::trigger::TRAP,
        "trap",
        Limits::default(),
    );
}

#[test]
fn a_looping_shadow_is_discarded_and_the_live_verdicts_are_untouched() {
    let limits = Limits {
        batch_deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    a_failing_shadow_is_discarded(guests::SPIN, guests::trigger::SPIN, "deadline", limits);
}

#[test]
fn stale_etags_are_refused_and_a_live_swap_discards_the_shadow() {
    let old = config();
    let gateway = crate::gateway_with(&old, Limits::default(), options(1));
    let (_admin, client) = crate::admin_on_socket(&gateway);
    let first = client
        .stage_config(&without_peering(&old, 0), None)
        .unwrap();
    let first = first.body["shadow"]["etag"].as_str().unwrap().to_owned();
    let second = client
        .stage_config(&without_peering(&old, 1), None)
        .unwrap();
    assert_eq!(second.status, 200, "{}", second.body);
    let second = second.body["shadow"]["etag"].as_str().unwrap().to_owned();
    assert_ne!(first, second);

    // The first shadow was replaced: naming it promotes nothing.
    let stale = client.promote_shadow(&first).unwrap();
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert_eq!(stale.body["reason"], "stale-shadow");
    let live = gateway.current().etag();
    let wrong = client.promote_shadow(&live).unwrap();
    assert_eq!(wrong.status, 412, "the live ETag is not the shadow's");
    assert_eq!(gateway.current().generation, 1);
    // A stage against a stale live ETag is refused as a swap would be.
    let refused = client
        .stage_config(&without_peering(&old, 2), Some("9-0000-0000"))
        .unwrap();
    assert_eq!(refused.status, 412, "{}", refused.body);
    assert_eq!(refused.body["reason"], "stale-digest");
    let kept = client.shadow().unwrap();
    assert_eq!(
        kept.body["shadow"]["etag"].as_str(),
        Some(second.as_str()),
        "a refused stage leaves the staged shadow"
    );

    // A live swap discards a staged shadow, and says why; promoting it is then 412.
    let third = client
        .stage_config(&without_peering(&old, 3), None)
        .unwrap();
    let third = third.body["shadow"]["etag"].as_str().unwrap().to_owned();
    let swapped = client.swap_config(&without_peering(&old, 4), None).unwrap();
    assert_eq!(swapped.status, 200, "{}", swapped.body);
    let gone = client.shadow().unwrap();
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.body["discarded"]["how"], "live-changed",
        "{}",
        gone.body
    );
    assert!(
        gone.body["discarded"]["why"]
            .as_str()
            .unwrap()
            .contains(&live),
        "{}",
        gone.body
    );
    let late = client.promote_shadow(&third).unwrap();
    assert_eq!(late.status, 412, "{}", late.body);
    assert_eq!(late.body["reason"], "stale-digest");
    assert_eq!(gateway.current().generation, 2);
    // Rollback discards too.
    client
        .stage_config(&without_peering(&old, 5), None)
        .unwrap();
    assert_eq!(client.rollback().unwrap().status, 200);
    assert_eq!(
        client.shadow().unwrap().body["discarded"]["how"],
        "live-changed"
    );
    let events = gateway.events();
    assert_eq!(events.shadow_ends.get("live-changed"), Some(&2));
    assert_eq!(events.shadow_ends.get("replaced"), Some(&2));
}

/// A sink for audit records the test reads back.
#[derive(Clone, Default)]
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_shadow_action_is_audited_refusals_included() {
    let old = config();
    let gateway = crate::gateway_with(&old, Limits::default(), options(1));
    let sink = Sink::default();
    let endpoint = Endpoint::Unix(crate::socket_path("shadow-audit"));
    let admin = AdminOptions {
        audit: Arc::new(AuditLog::to_writer("test", Box::new(sink.clone()))),
        ..AdminOptions::new(endpoint.clone(), None)
    };
    let _server = AdminServer::start(gateway.clone(), admin).unwrap();
    let client = Client::new(endpoint, None);
    assert_eq!(client.discard_shadow(None).unwrap().status, 409);
    assert_eq!(
        client.stage_config("kind: nothing\n", None).unwrap().status,
        422
    );
    let staged = client
        .stage_config(&without_peering(&old, 0), None)
        .unwrap();
    let etag = staged.body["shadow"]["etag"].as_str().unwrap().to_owned();
    assert_eq!(client.discard_shadow(None).unwrap().status, 200);
    client
        .stage_config(&without_peering(&old, 1), None)
        .unwrap();
    let etag2 = client.shadow().unwrap().body["shadow"]["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(client.promote_shadow(&etag).unwrap().status, 412);
    assert_eq!(client.promote_shadow(&etag2).unwrap().status, 200);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("request"), s("result"))
        })
        .collect();
    let want = [
        ("DELETE /shadow", "no-shadow"),
        ("PUT /shadow/config", "config-refused"),
        ("PUT /shadow/config", "changed"),
        ("DELETE /shadow", "changed"),
        ("PUT /shadow/config", "changed"),
        ("POST /shadow/promote", "stale-shadow"),
        ("POST /shadow/promote", "changed"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(seen, want, "{text}");
    let promoted = records.last().unwrap();
    assert_eq!(promoted["after"]["etag"].as_str(), Some(etag2.as_str()));
}

/// The share is a share of batches: with a quarter, a quarter of a worker's batches are
/// judged with the shadow.
#[test]
fn the_shadow_judges_its_share_of_batches() {
    let config = config();
    let packets = traffic(&config, 20_000);
    let options = Options {
        shadow_share: 0.25,
        ..options(1)
    };
    let gateway = crate::gateway_with(&config, Limits::default(), options);
    let (_admin, client) = crate::admin_on_socket(&gateway);
    client
        .stage_config(&without_peering(&config, 0), None)
        .unwrap();
    run(&gateway, &packets);
    let batches = PER_WORKER / 256;
    let report = client.shadow().unwrap().body;
    assert_eq!(
        report["shadow"]["report"]["batches"].as_u64(),
        Some(batches / 4)
    );
    assert_eq!(
        report["shadow"]["report"]["packets"].as_u64(),
        Some(PER_WORKER / 4)
    );
}

/// What the command-line tests start from: a gateway on `old` with its admin API on a
/// socket, and `new` (`old` without its busiest peering for `packets`) written to `file`.
struct CliSetup {
    old: String,
    new: String,
    packets: Vec<Packet>,
    gateway: std::sync::Arc<flowgate_host::gateway::Gateway>,
    _server: flowgate_host::admin::AdminServer,
    admin: String,
    file: String,
}

impl CliSetup {
    fn new(what: &str) -> CliSetup {
        let old = config();
        let packets = traffic(&old, 20_000);
        let new = busiest_peering(&old, &packets);
        let gateway = crate::gateway_with(&old, Limits::default(), options(1));
        let (server, _client) = crate::admin_on_socket(&gateway);
        let admin = server.endpoint().to_string();
        let dir = crate::socket_path(what).parent().unwrap().to_owned();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("new.yaml");
        std::fs::write(&file, &new).unwrap();
        CliSetup {
            old,
            new,
            packets,
            gateway,
            _server: server,
            admin,
            file: file.to_str().unwrap().to_owned(),
        }
    }
}

/// `flowgate shadow`: stage a configuration, read the report as a table, explain the samples
/// under both releases, promote it.
#[test]
fn the_shadow_commands_stage_report_explain_and_promote() {
    use crate::cli::flowgate;
    let CliSetup {
        old,
        new,
        packets,
        gateway,
        _server,
        admin,
        file,
    } = CliSetup::new("shadow-cli");
    let file = file.as_str();
    let text = |out: &std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (stdout, stderr)
    };

    let out = flowgate(&["shadow", "status", "--admin", &admin], "");
    assert!(!out.status.success(), "no shadow yet");
    let out = flowgate(
        &["shadow", "stage", "--config", file, "--admin", &admin],
        "",
    );
    assert!(out.status.success(), "{:?}", text(&out));
    run(&gateway, &packets);
    let want = expected(&old, &new, &stream(&packets, 0));

    let out = flowgate(&["shadow", "status", "--admin", &admin], "");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("packets compared  {}", want.packets)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("changed           {} (", want.changed)),
        "{stdout}"
    );

    // Explaining needs the shadow's configuration, which is not the live one.
    let out = flowgate(&["shadow", "samples", "--explain", "--admin", &admin], "");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--config"), "{:?}", text(&out));
    let out = flowgate(
        &[
            "shadow",
            "samples",
            "--explain",
            "--config",
            file,
            "--admin",
            &admin,
        ],
        "",
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let samples = want.changed.min(32) as usize;
    assert_eq!(
        stdout.matches("under the live release:").count(),
        samples,
        "{stdout}"
    );
    assert_eq!(stdout.matches("under the shadow release:").count(), samples);

    let out = flowgate(&["shadow", "promote", "--admin", &admin], "");
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(gateway.current().cause.as_str(), "shadow-promote");
    assert_eq!(*gateway.current().config, *new);
    let out = flowgate(&["shadow", "discard", "--admin", &admin], "");
    assert!(!out.status.success(), "nothing left to discard");
}

/// `flowgate swap --shadow`: a change beyond its budget is discarded and the command fails;
/// within it, the very shadow measured is promoted.
#[test]
fn swap_with_a_shadow_promotes_within_the_budget_and_refuses_beyond_it() {
    use crate::cli::flowgate;
    let CliSetup {
        old: _,
        new,
        packets,
        gateway,
        _server,
        admin,
        file,
    } = CliSetup::new("shadow-gate");
    let file = file.as_str();
    let (stop, handles) = crate::run_workers(&gateway, &packets.into(), STRIDE, 100_000);

    let gate = |budget: &[&str]| {
        let mut args = vec!["swap", "--config", file, "--shadow", "1", "--admin", &admin];
        args.extend_from_slice(budget);
        flowgate(&args, "")
    };
    let out = gate(&["--max-changed", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("beyond the budget"), "{stderr}");
    assert_eq!(gateway.current().generation, 1, "nothing promoted");
    assert_eq!(gateway.shadow_gone().unwrap().how.as_str(), "discarded");

    let out = gate(&["--max-changed-share", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("within the budget"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("packets compared"), "{stdout}");
    let release = gateway.current();
    assert_eq!(release.cause.as_str(), "shadow-promote");
    assert_eq!(*release.config, *new);
    assert!(release.shadow.as_ref().unwrap().changed > 0);

    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
}

/// With trusted keys, a shadow's module is checked as a swap's is: an unsigned upload is
/// answered as a swap's is, one signed over other bytes is refused as a swap refuses it, and a
/// signed one is staged with its signer.
#[test]
fn a_shadow_module_needs_the_signatures_a_swap_needs() {
    use crate::signing::{detached, test_key};
    let (key, trusted) = test_key();
    // Unsigned local modules are let in (the bundled one the gateway starts with is one); a
    // bad signature never is.
    let options = Options {
        trust: Some(Arc::new(flowgate_host::oci::Trust::new(vec![trusted]))),
        allow_unsigned_local: true,
        ..options(1)
    };
    let gateway = crate::gateway_with(&config(), Limits::default(), options);
    let (_admin, client) = crate::admin_on_socket(&gateway);
    let module = guests::HONEST_V2;
    let unsigned = client.stage_module(module, None, None, None).unwrap();
    let swap = client.swap_module(module, None, None).unwrap();
    // With allow_unsigned_local an unsigned upload is let in for both: the same answer.
    assert_eq!(
        unsigned.status, swap.status,
        "{} / {}",
        unsigned.body, swap.body
    );
    let other = detached(&key, flowgate_host::DEFAULT_MODULE, "v2.wasm");
    let refused = client
        .stage_module(module, None, None, Some(&other))
        .unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.body["reason"], "signature-refused");
    assert_eq!(
        refused.body["staged"],
        Value::Null,
        "refused before the gateway was asked"
    );
    let swap = client
        .swap_signed_module(module, &other, None, None)
        .unwrap();
    assert_eq!(
        (swap.status, &swap.body["reason"]),
        (422, &refused.body["reason"])
    );
    let good = detached(&key, module, "v2.wasm");
    let staged = client
        .stage_module(module, None, None, Some(&good))
        .unwrap();
    assert_eq!(staged.status, 200, "{}", staged.body);
    assert!(
        staged.body["shadow"]["release"]["module"]["signer"]["fingerprint"].is_string(),
        "{}",
        staged.body
    );
}

/// A port that hands out packets only while `open` holds some, then stays quiet (never dry),
/// as a VXLAN socket does when traffic stops.
struct Quiet {
    packets: Arc<[Packet]>,
    next: usize,
    open: Arc<std::sync::atomic::AtomicU64>,
}

impl Port for Quiet {
    fn fill(&mut self, batch: &mut Vec<Packet>, max: usize) -> usize {
        let left = self.open.load(Ordering::Acquire);
        let n = (max as u64).min(left) as usize;
        if n == 0
            || self
                .open
                .compare_exchange(left, left - n as u64, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            std::thread::sleep(Duration::from_millis(1));
            return 0;
        }
        for _ in 0..n {
            batch.push(self.packets[self.next % self.packets.len()]);
            self.next += 1;
        }
        n
    }

    fn dry(&self) -> bool {
        false
    }
}

/// Workers that judged with a shadow and then went quiet keep their instances of it until
/// their next batch. Shadows staged and discarded on a quiet gateway (as a gated tag watch
/// does) must still leave room in the instance pool for the operator's swap, under
/// `--on-fault previous` too.
#[test]
fn a_quiet_gateway_with_shadows_behind_it_still_takes_a_swap() {
    let old = config();
    let new = without_peering(&old, 0);
    let packets: Arc<[Packet]> = traffic(&old, 4096).into();
    let workers = 8;
    let gateway = crate::gateway_with(
        &old,
        Limits::default(),
        Options {
            on_fault: flowgate_host::gateway::OnFault::Previous,
            ..options(workers)
        },
    );
    // Each worker's own gate, so that every worker judges every burst.
    let open: Vec<_> = (0..workers)
        .map(|_| Arc::new(std::sync::atomic::AtomicU64::new(0)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..workers)
        .map(|id| {
            let (gateway, stop) = (gateway.clone(), stop.clone());
            let mut port = Quiet {
                packets: packets.clone(),
                next: id * STRIDE,
                open: open[id].clone(),
            };
            std::thread::spawn(move || gateway.run_worker(id, &mut port, &stop))
        })
        .collect();
    // Lets `n` packets through each worker and waits until every one was judged.
    let burst = |n: u64| {
        let before = gateway.counters().packets;
        open.iter().for_each(|o| o.store(n, Ordering::Release));
        let n = n * workers as u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while gateway.counters().packets < before + n {
            assert!(std::time::Instant::now() < deadline, "the burst was judged");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // A swap, so that every worker keeps an instance of the previous release too.
    burst(256 * 64);
    gateway
        .swap(flowgate_host::gateway::SwapRequest::config(&new))
        .unwrap();
    burst(256 * 64);
    // Shadows staged, judged by every worker and discarded while the gateway is quiet.
    for round in 0..3 {
        let config = if round % 2 == 0 { &old } else { &new };
        gateway
            .stage_shadow(flowgate_host::gateway::SwapRequest::config(config))
            .unwrap();
        burst(256 * 8);
        gateway.discard_shadow(None, None).unwrap();
    }
    gateway
        .stage_shadow(flowgate_host::gateway::SwapRequest::config(&old))
        .unwrap();
    // Quiet now: the operator's swap must find room.
    let swapped = gateway.swap(flowgate_host::gateway::SwapRequest::config(&old));
    assert!(swapped.is_ok(), "{:?}", swapped.err());
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
}

/// A shadow whose module faults on a worker while its promotion is being approved (the audit
/// record written, the slot held) is not promoted: the promotion is refused as `shadow-fault`
/// and the shadow discarded as a fault, whichever got there first.
#[test]
fn a_shadow_that_faults_while_it_is_promoted_is_not_promoted() {
    use flowgate_host::gateway::{Approval, ModuleBytes, SwapRequest};
    let config = config();
    let mut packets = traffic(&config, 4096);
    for p in packets.iter_mut().step_by(97) {
        *p = Packet::tcp(p.src_vni, p.src, guests::trigger::TRAP, p.dst, 80);
    }
    let gateway = crate::gateway_with(&config, Limits::default(), options(1));
    let shadow = gateway
        .stage_shadow(SwapRequest::module(ModuleBytes::from(guests::TRAP)))
        .unwrap();
    let etag = shadow.etag();
    let worker = std::sync::Mutex::new(None);
    let approve = |_: &_, _: &_| {
        // Traffic that makes the shadow trap, while the promotion holds the slot: the
        // worker records the fault, then waits for the slot.
        let (gateway, packets) = (gateway.clone(), Arc::<[Packet]>::from(&packets[..]));
        *worker.lock().unwrap() = Some(std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            let mut source = Trace::new(packets, 0, 0, Some(4096));
            gateway.run_worker(0, &mut source, &stop);
        }));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !shadow.module_faulted() {
            assert!(std::time::Instant::now() < deadline, "the shadow faulted");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    let promoted = gateway.promote_shadow(Some(&etag), Some(Approval(&approve)));
    let e = promoted.err().expect("a faulted shadow is not promoted");
    assert_eq!(e.reason(), "shadow-fault", "{e}");
    assert_eq!(gateway.current().generation, 1);
    assert_eq!(gateway.shadow_gone().unwrap().how.as_str(), "fault");
    let worker = worker.lock().unwrap().take();
    worker.unwrap().join().unwrap();
    assert!(gateway.events().faults.is_empty(), "no live fault");
}
