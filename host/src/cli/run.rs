//! `run`, `check` and `replay`: traffic through a policy, from a trace, JSON lines or a
//! capture.

use std::fs;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flowgate_host::Policy;
use flowgate_host::dataplane::{self, Counters, DataplaneDrop};
use flowgate_policy::json::{parse_packet, verdict_json};
use flowgate_policy::{Packet, Verdict, VerdictKind};

use super::*;

impl RunArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let RunArgs {
            policy,
            packets,
            json,
        } = self;
        run(&policy, packets.as_deref(), json)
    }
}

fn run(args: &PolicyArgs, packets: Option<&Path>, json: bool) -> Result<ExitCode> {
    let (config, config_name, trace, trace_name) = match (&args.config, packets) {
        (Some(config), Some(packets)) => (
            args.limits.read_config(config)?,
            config.display().to_string(),
            read_text(packets)?,
            packets.display().to_string(),
        ),
        (None, None) => (
            flowgate_host::DEFAULT_CONFIG.to_owned(),
            "fixtures/default/config.yaml (bundled)".to_owned(),
            flowgate_host::DEFAULT_PACKETS.to_owned(),
            "fixtures/default/packets.jsonl (bundled)".to_owned(),
        ),
        _ => bail!("give both --config and --packets, or neither for the bundled fixture"),
    };
    let mut loaded = load_policy(args, &config, &config_name)?;
    let mut counters = Counters::default();
    let mut packets = Vec::new();
    for line in trace.lines().filter(|l| !l.trim().is_empty()) {
        match parse_packet(line, loaded.policy.catalog()) {
            Ok(p) => packets.push(p),
            Err(_) => counters.count_drop(DataplaneDrop::Malformed.as_str(), 1),
        }
    }
    let start = Instant::now();
    dataplane::judge_all(
        loaded.policy.as_mut(),
        &packets,
        args.batch as usize,
        &mut counters,
        |_, _| {},
    )?;
    let elapsed = start.elapsed();
    let pps = packets.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    if json {
        let mut out = counters.to_json();
        out["policy"] = loaded.describe.clone().into();
        out["config"] = config_name.into();
        out["packets_file"] = trace_name.into();
        out["packets_per_second"] = (pps.round() as u64).into();
        outln!("{out}")?;
    } else {
        print_summary(&counters, &loaded.describe, &config_name, &trace_name, pps)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_summary(
    c: &Counters,
    policy: &str,
    config: &str,
    trace: &str,
    pps: f64,
) -> std::io::Result<()> {
    outln!("flowgate run")?;
    outln!("  policy   {policy}")?;
    outln!("  config   {config}")?;
    outln!("  packets  {trace}")?;
    outln!()?;
    let row = |name: &str, n: u64| outln!("  {name:<28}{n:>10}");
    row("packets", c.packets)?;
    row("batches", c.batches)?;
    for (kind, n) in c.by_kind() {
        row(kind.as_str(), n)?;
    }
    for (reason, n) in &c.drops {
        row(&format!("  {reason}"), *n)?;
    }
    outln!("  forwarded per destination VPC")?;
    for (vpc, n) in &c.forwarded {
        row(&format!("  {vpc}"), *n)?;
    }
    outln!("  {:<28}{:>10.0}", "packets per second", pps)
}

impl CheckArgs {
    pub fn execute(self) -> Result<ExitCode> {
        check(&self.policy, self.packets.as_deref())
    }
}

fn check(args: &PolicyArgs, packets: Option<&Path>) -> Result<ExitCode> {
    let Some(config_path) = &args.config else {
        bail!("check needs --config FILE")
    };
    let config = args.limits.read_config(config_path)?;
    let mut loaded = load_policy(args, &config, &config_path.display().to_string())?;
    // A big buffer: a batch is judged when it is full or when the input has nothing more
    // buffered, so output follows input promptly on a pipe and batches stay large on files.
    let source: Box<dyn io::Read> = match packets {
        Some(path) => {
            Box::new(fs::File::open(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => Box::new(io::stdin().lock()),
    };
    let mut input = io::BufReader::with_capacity(1 << 16, source);
    let mut out = BufWriter::new(io::stdout().lock());
    let batch = args.batch as usize;
    // Lines in order: a packet, or the error of a line that is not one.
    let mut pending: Vec<Result<Packet, String>> = Vec::with_capacity(batch);
    let mut in_batch = 0;
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let read = io::Read::take(&mut input, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading line {n}"))?;
        if read == 0 {
            break;
        }
        let entry = if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
            // Skip the rest of the overlong line.
            let mut rest = Vec::new();
            while input.read_until(b'\n', &mut rest)? > 0 && rest.last() != Some(&b'\n') {
                rest.clear();
            }
            Some(Err(format!("line {n}: longer than {MAX_LINE} bytes")))
        } else {
            match std::str::from_utf8(&line) {
                Err(e) => Some(Err(format!(
                    "line {n}: not UTF-8 text (byte {} is not)",
                    e.valid_up_to() + 1
                ))),
                Ok(text) if text.trim().is_empty() => None,
                Ok(text) => Some(
                    parse_packet(text, loaded.policy.catalog())
                        .map_err(|e| format!("line {n}: {e}")),
                ),
            }
        };
        if let Some(entry) = entry {
            in_batch += usize::from(entry.is_ok());
            pending.push(entry);
        }
        if in_batch == batch || (input.buffer().is_empty() && !pending.is_empty()) {
            flush_check(loaded.policy.as_mut(), &mut pending, &mut out)?;
            out.flush()?;
            in_batch = 0;
        }
    }
    flush_check(loaded.policy.as_mut(), &mut pending, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The longest packet line `check` reads; a longer one gets an error line.
pub const MAX_LINE: usize = 64 << 10;

pub fn flush_check(
    policy: &mut dyn Policy,
    pending: &mut Vec<Result<Packet, String>>,
    out: &mut impl Write,
) -> Result<()> {
    let packets: Vec<Packet> = pending
        .iter()
        .filter_map(|e| e.as_ref().ok().copied())
        .collect();
    let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(packets.len());
    let mut counters = Counters::default();
    dataplane::judge_all(
        policy,
        &packets,
        packets.len().max(1),
        &mut counters,
        |_, v| verdicts.push(v),
    )?;
    let mut verdicts = verdicts.into_iter();
    for entry in pending.drain(..) {
        let line = match entry {
            Err(e) => serde_json::json!({ "error": e }),
            Ok(_) => match verdicts.next().flatten() {
                Some(v) => verdict_json(policy.catalog(), v),
                None => {
                    serde_json::json!({"verdict": VerdictKind::Drop.as_str(), "reason": DataplaneDrop::PolicyFault.as_str()})
                }
            },
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

impl ReplayArgs {
    pub fn execute(self) -> Result<ExitCode> {
        replay(&self)
    }
}

fn replay(args: &ReplayArgs) -> Result<ExitCode> {
    use flowgate_host::io::pcap::{self, CaptureReader, CaptureWriter, Outputs};
    use std::io::IsTerminal;

    let policy_args = &args.policy;
    let Some(config_path) = &policy_args.config else {
        bail!("replay needs --config FILE")
    };
    let config = policy_args.limits.read_config(config_path)?;
    let config_name = config_path.display().to_string();
    let mut loaded = load_policy(policy_args, &config, &config_name)?;
    let default_vni = match (&args.src_vpc, args.vni) {
        (Some(name), _) => {
            let catalog = loaded.policy.catalog();
            let id = catalog
                .vpc_by_name(name)
                .with_context(|| format!("--src-vpc {name}: no such VPC in {config_name}"))?;
            Some(catalog.vpc(id).vni)
        }
        (None, vni) => vni,
    };
    // The input first: a capture that cannot be read leaves every output as it was.
    let mut input = CaptureReader::open(&args.pcap)?;
    let mut files = open_outputs(
        &args.pcap,
        &[
            ("--out", args.out.as_deref()),
            ("--drops", args.drops.as_deref()),
            ("--ambiguous", args.ambiguous.as_deref()),
        ],
    )?
    .into_iter();
    let mut create = |p: &Option<PathBuf>| -> Result<Option<CaptureWriter>> {
        match (files.next().flatten(), p) {
            (Some(file), Some(path)) => Ok(Some(CaptureWriter::new(file, path)?)),
            _ => Ok(None),
        }
    };
    let mut outputs = Outputs {
        allowed: create(&args.out)?,
        dropped: create(&args.drops)?,
        ambiguous: create(&args.ambiguous)?,
    };
    // A progress bar for long captures, on a terminal only.
    let size = fs::metadata(&args.pcap).map(|m| m.len()).unwrap_or(0);
    let bar = if std::io::stderr().is_terminal() && size > 8 << 20 {
        let bar = indicatif::ProgressBar::new(size);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let report = pcap::replay(
        loaded.policy.as_mut(),
        &mut input,
        &mut outputs,
        pcap::Options {
            batch: policy_args.batch as usize,
            default_vni,
            skip_policy: args.skip_policy,
        },
        |bytes| bar.set_position(bytes),
    )?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let mut written = serde_json::Map::new();
    for (name, out) in [
        ("out", outputs.allowed),
        ("ambiguous", outputs.ambiguous),
        ("drops", outputs.dropped),
    ] {
        if let Some(w) = out {
            written.insert(name.into(), w.frames.into());
            w.finish()?;
        }
    }
    let per_second =
        |d: std::time::Duration| (report.frames as f64 / d.as_secs_f64().max(1e-9)).round() as u64;
    let pps = per_second(elapsed);
    let describe = if args.skip_policy {
        format!("{} (policy call skipped)", loaded.describe)
    } else {
        loaded.describe.clone()
    };
    let pcap_name = args.pcap.display().to_string();
    if args.json {
        let mut out = report.counters.to_json();
        out["policy"] = describe.into();
        out["config"] = config_name.into();
        out["pcap"] = pcap_name.into();
        out["frames"] = report.frames.into();
        out["written"] = written.into();
        out["packets_per_second"] = pps.into();
        out["phase_packets_per_second"] = serde_json::json!({
            "parse": per_second(report.timings.parse),
            "judge": per_second(report.timings.judge),
            "write": per_second(report.timings.write),
        });
        outln!("{out}")?;
    } else {
        print_summary(
            &report.counters,
            &describe,
            &config_name,
            &pcap_name,
            pps as f64,
        )?;
        outln!("  frames read                 {:>10}", report.frames)?;
        for (name, n) in &written {
            outln!(
                "  {:<28}{:>10}",
                format!("written to --{name}"),
                n.as_u64().unwrap_or_default()
            )?;
        }
        outln!(
            "  per phase, frames per second: parse {}, judge {}, write {}",
            per_second(report.timings.parse),
            per_second(report.timings.judge),
            per_second(report.timings.write)
        )?;
    }
    if let Some(e) = &report.stopped {
        eprintln!(
            "flowgate: replay stopped early: {e} (the {} frames before it were replayed and written)",
            report.frames
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the outputs, in order, refusing any that is the input or another output however it
/// is named (a symlink, even one to a file that does not exist yet, a hard link, `..`):
/// each is opened first (created when absent, nothing truncated) and the files compared by
/// device and inode. Only when all are distinct are existing ones emptied; on a refusal the
/// files this made are removed, and nothing else was changed.
pub fn open_outputs(
    input: &Path,
    outputs: &[(&str, Option<&Path>)],
) -> Result<Vec<Option<fs::File>>> {
    use std::os::unix::fs::MetadataExt;
    let identity = |m: &fs::Metadata| (m.dev(), m.ino());
    let mut seen: Vec<(&str, (u64, u64))> = Vec::new();
    if let Ok(meta) = fs::metadata(input) {
        seen.push(("--pcap", identity(&meta)));
    }
    let mut made: Vec<PathBuf> = Vec::new();
    let mut files = Vec::with_capacity(outputs.len());
    let opened = (|| -> Result<()> {
        for &(flag, path) in outputs {
            let Some(path) = path else {
                files.push(None);
                continue;
            };
            let existed = fs::metadata(path).is_ok();
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("{flag} {}: cannot be written", path.display()))?;
            if !existed {
                // Where it was made: a symlink's target, not the link.
                made.push(fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()));
            }
            let id = identity(&file.metadata()?);
            if let Some((other, _)) = seen.iter().find(|(_, s)| *s == id) {
                bail!(
                    "{flag} {} is the same file as {other}: refused, nothing was written",
                    path.display()
                );
            }
            seen.push((flag, id));
            files.push(Some(file));
        }
        for file in files.iter().flatten() {
            // Pipes and terminals (`/dev/stdout`) have nothing to empty.
            if file.metadata()?.is_file() {
                file.set_len(0)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = opened {
        for path in &made {
            let _ = fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(files)
}
