//! `flowgate`: run a configuration and a stream of packets through a policy module.

use std::fs;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use flowgate_host::admin;
use flowgate_host::dataplane::{self, Counters, MALFORMED};
use flowgate_host::gateway::{DEFAULT_MAX_CONFIG_BYTES, Gateway, OnFault, Options};
use flowgate_host::hex;
use flowgate_host::http::Endpoint;
use flowgate_host::kit;
use flowgate_host::source::Replay;
use flowgate_host::wasm::{EngineOptions, Limits, LoadedModule, Runtime, WasmPolicy};
use flowgate_host::{NativePolicy, Policy, StartError};
use flowgate_policy::cases::Case;
use flowgate_policy::json::{packet_json, parse_packet, parse_packet_text, verdict_json};
use flowgate_policy::synth::{self, Scale};
use flowgate_policy::{Packet, Verdict};

#[derive(Parser)]
#[command(
    name = "flowgate",
    version,
    about = "A Wasm policy engine for VPC gateways: the peering flow filter and destination-VPC lookup."
)]
struct Cli {
    /// What to do; `run` on the bundled fixture when absent.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole trace through the dataplane loop and print a summary. With no arguments,
    /// runs the bundled default fixture.
    Run {
        #[command(flatten)]
        policy: PolicyArgs,
        /// The packets, as JSON lines (the `check` input format).
        #[arg(long, requires = "config")]
        packets: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Judge packets given as JSON lines (stdin by default) and print one verdict per line.
    Check {
        #[command(flatten)]
        policy: PolicyArgs,
        /// The packets, as JSON lines; stdin when absent.
        #[arg(long)]
        packets: Option<PathBuf>,
    },
    /// Run conformance cases (the fixtures/cases format) against a module: pass or fail per
    /// case, with expected against actual for every difference. Exits 1 when a case fails.
    Test {
        /// The module (a Wasm component); with --native, leave it out.
        #[arg(required_unless_present = "native", value_name = "MODULE")]
        module: Option<PathBuf>,
        /// Case folders: a case (holding config.yaml), or a folder of cases. The bundled
        /// fixtures/cases when absent.
        #[arg(value_name = "CASES_DIR")]
        cases: Vec<PathBuf>,
        /// Run the cases through the policy library natively, with no module: every path
        /// given is a case folder.
        #[arg(long)]
        native: bool,
        /// Do not read or write the cache of precompiled modules.
        #[arg(long)]
        no_cache: bool,
    },
    /// Run the same traffic through two modules and show how the verdicts change.
    Diff {
        /// The module before (for example the one in production).
        old: PathBuf,
        /// The module after.
        new: PathBuf,
        /// The configuration both modules get.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        traffic: TrafficArgs,
        /// Print the diff as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Explain a packet's verdict: which peerings admit it, through which expose entries, and
    /// for a drop the nearest misses. The module explains its own verdict.
    Explain {
        /// The configuration.
        #[arg(long)]
        config: PathBuf,
        /// The module; the bundled default when absent.
        #[arg(long)]
        module: Option<PathBuf>,
        /// The packet: "VPC SRC[:PORT] -> DST[:PORT] PROTO", for example
        /// "vpc-1 10.0.0.5:1234 -> 1.0.0.9:80 tcp"; IPv6 with ports as [fd00::1]:53; the
        /// source VPC by name or as vni:N.
        packet: String,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a capture (pcap or pcapng): frames are parsed, judged a batch per policy call,
    /// and written out: allowed ones with the VXLAN VNI of their destination VPC, ambiguous
    /// and dropped ones to their own captures. Prints the `run` summary.
    Replay {
        #[command(flatten)]
        policy: PolicyArgs,
        /// The capture to replay: Ethernet frames, VXLAN (UDP 4789) or, with --src-vpc or
        /// --vni, plain.
        #[arg(long)]
        pcap: PathBuf,
        /// Where allowed frames go (pcap), VNI rewritten to the destination VPC's.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where dropped frames go (pcap), unchanged: by the policy or unreadable.
        #[arg(long)]
        drops: Option<PathBuf>,
        /// Where frames allowed with an ambiguous destination go (pcap), unchanged; without
        /// it they are counted but not written.
        #[arg(long)]
        ambiguous: Option<PathBuf>,
        /// The source VPC of frames that are not VXLAN.
        #[arg(long, conflicts_with = "vni")]
        src_vpc: Option<String>,
        /// The source VNI of frames that are not VXLAN.
        #[arg(long)]
        vni: Option<u32>,
        /// Skip the policy call: every readable frame goes to --out unchanged (measures what
        /// the rest of the path costs).
        #[arg(long)]
        skip_policy: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what a module says about itself.
    Info {
        /// The module (a Wasm component); the bundled default when absent.
        #[arg(long)]
        module: Option<PathBuf>,
    },
    /// Run a long-lived gateway: worker threads judge traffic while modules and configurations
    /// are swapped through the admin API (or SIGHUP, which re-reads the files given here).
    Serve(ServeArgs),
    /// Show the status of a running gateway.
    Status {
        #[command(flatten)]
        admin: ClientArgs,
    },
    /// Swap a running gateway's module (and configuration), or only its configuration.
    Swap {
        /// The new module (a Wasm component); absent: swap only the configuration.
        module: Option<PathBuf>,
        /// The new configuration.
        #[arg(long, required_unless_present = "module")]
        config: Option<PathBuf>,
        /// Swap only if the release serving is this one (its ETag, from `flowgate status`).
        /// Without it, the ETag of the release serving when the command starts is sent, so a
        /// change made by someone else meanwhile is not overwritten.
        #[arg(long)]
        if_match: Option<String>,
        /// Swap nothing: fetch the module and configuration in force, run traffic through
        /// them and through the new ones, and show how the verdicts would change.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        traffic: TrafficArgs,
        #[command(flatten)]
        admin: ClientArgs,
    },
    /// Roll a running gateway back to its previous good release.
    Rollback {
        #[command(flatten)]
        admin: ClientArgs,
    },
    /// Measure, in under a minute, what the sandbox costs: a no-op call, and native against
    /// Wasm per packet at batch sizes 1, 32, 256 and 4096 on a generated table.
    Bench {
        /// Peerings of the generated table.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        peerings: u32,
        /// The module to measure; the bundled default when absent.
        #[arg(long)]
        module: Option<PathBuf>,
    },
    /// Generate a configuration and a trace (how `fixtures/default` was made).
    Gen {
        /// Number of peerings.
        #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        peerings: u32,
        /// Number of packets.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(0..=100_000_000))]
        packets: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory to write `config.yaml` and `packets.jsonl` into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The configuration; the bundled demo one when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The policy module; the bundled default when absent.
    #[arg(long)]
    module: Option<PathBuf>,
    /// Where packets come from: `replay` loops over --packets (or the bundled trace), `gen`
    /// generates traffic from the configuration's own prefixes, `vxlan` receives VXLAN on
    /// --listen and forwards allowed packets to their VPC's --endpoint.
    #[arg(long, value_enum, default_value_t = SourceKind::Replay)]
    source: SourceKind,
    /// With `--source vxlan`: the UDP address to receive VXLAN on.
    #[arg(long, default_value = "127.0.0.1:4789")]
    listen: String,
    /// With `--source vxlan`: a VPC's tunnel endpoint, as NAME=HOST:PORT (repeatable).
    #[arg(long = "endpoint", value_name = "NAME=HOST:PORT")]
    endpoints: Vec<String>,
    /// With `--source vxlan`: a file of tunnel endpoints, one `NAME HOST:PORT` per line.
    #[arg(long)]
    endpoints_file: Option<PathBuf>,
    /// The trace to replay.
    #[arg(long)]
    packets: Option<PathBuf>,
    /// Packets per second over all workers; 0 for as fast as they go.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Worker threads; one per core when absent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Packets per policy call.
    #[arg(long, default_value_t = dataplane::DEFAULT_BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: u32,
    /// Where the admin API listens: `unix:PATH` (the default is
    /// $XDG_RUNTIME_DIR/flowgate/admin.sock, else /run/flowgate/admin.sock; the socket is made
    /// 0600), or `HOST:PORT`, which needs --admin-token-file.
    #[arg(long, value_parser = endpoint)]
    admin: Option<Endpoint>,
    /// A file holding the bearer token every admin request must carry (required on TCP).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// What to do with a batch the module fails on.
    #[arg(long, value_enum, default_value_t = FaultMode::FailClosed)]
    on_fault: FaultMode,
    /// Revert to the previous good release after this many faults ...
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    fault_limit: u32,
    /// ... within this many seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    fault_window: f64,
    /// Stop after this many seconds (run until SIGINT or SIGTERM when absent).
    #[arg(long, value_parser = seconds)]
    duration: Option<f64>,
    /// Do not read or write the cache of precompiled modules.
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// How to reach a running gateway's admin API.
#[derive(Args)]
struct ClientArgs {
    /// The gateway's admin API: `unix:PATH` (the default is
    /// $XDG_RUNTIME_DIR/flowgate/admin.sock, else /run/flowgate/admin.sock) or `HOST:PORT`.
    #[arg(long, value_parser = endpoint)]
    admin: Option<Endpoint>,
    /// A file holding the gateway's bearer token; else the FLOWGATE_ADMIN_TOKEN variable.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl ClientArgs {
    fn client(&self) -> Result<admin::Client> {
        let token = match &self.token_file {
            Some(path) => Some(admin::read_token_file(path)?),
            None => std::env::var(admin::TOKEN_ENV)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        };
        let endpoint = self.admin.clone().unwrap_or_else(Endpoint::default_socket);
        Ok(admin::Client::new(endpoint, token))
    }
}

/// Limits on what a configuration may cost.
#[derive(Args, Clone, Copy)]
struct LimitArgs {
    /// The largest configuration accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_CONFIG_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    max_config_bytes: u64,
    /// The most memory a module instance may use, in MiB.
    #[arg(long, default_value_t = (Limits::default().memory_bytes >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    module_memory_mib: u32,
    /// The longest a module may take to read a configuration, in seconds.
    #[arg(long, default_value_t = Limits::default().configure_deadline.as_secs_f64(), value_parser = seconds)]
    configure_timeout: f64,
}

impl Default for LimitArgs {
    fn default() -> Self {
        LimitArgs {
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES as u64,
            module_memory_mib: (Limits::default().memory_bytes >> 20) as u32,
            configure_timeout: Limits::default().configure_deadline.as_secs_f64(),
        }
    }
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            memory_bytes: (self.module_memory_mib as usize) << 20,
            configure_deadline: std::time::Duration::from_secs_f64(self.configure_timeout),
            ..Limits::default()
        }
    }

    /// Reads a configuration file, refusing one over --max-config-bytes before reading it
    /// all (`/dev/zero` is refused, not read until memory runs out).
    fn read_config(&self, path: &Path) -> Result<String> {
        let limit = self.max_config_bytes;
        let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, limit + 1), &mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() as u64 > limit {
            bail!(
                "{}: the configuration is over the limit of {limit} bytes (raise it with --max-config-bytes)",
                path.display()
            );
        }
        String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not UTF-8 text (byte {} is not)",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })
    }
}

/// A number of seconds: finite, above zero, at most a year.
fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !value.is_finite() || value <= 0.0 || value > 365.0 * 86400.0 {
        return Err(format!(
            "`{text}`: a number of seconds above 0 and at most a year"
        ));
    }
    Ok(value)
}

fn endpoint(text: &str) -> Result<Endpoint, String> {
    Endpoint::parse(text)
}

/// The traffic of a diff.
#[derive(Args)]
struct TrafficArgs {
    /// The packets, as JSON lines (the `check` input format).
    #[arg(long, conflicts_with = "generate")]
    packets: Option<PathBuf>,
    /// Generate this many packets from the configuration's own prefixes (the default, with
    /// 10,000, when --packets is absent).
    #[arg(long = "gen", id = "generate")]
    generate: Option<usize>,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sample packets shown per change.
    #[arg(long, default_value_t = 3)]
    samples: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SourceKind {
    Replay,
    Gen,
    Vxlan,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FaultMode {
    FailClosed,
    Previous,
}

#[derive(Args)]
struct PolicyArgs {
    /// The configuration (YAML or JSON).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The policy module (a Wasm component); the bundled default when absent.
    #[arg(long, conflicts_with = "native")]
    module: Option<PathBuf>,
    /// Run the policy library natively instead of a Wasm module (a baseline).
    #[arg(long)]
    native: bool,
    /// Packets per policy call.
    #[arg(long, default_value_t = dataplane::DEFAULT_BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: u32,
    /// Do not read or write the cache of precompiled modules.
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flowgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let command = cli.command.unwrap_or(Command::Run {
        policy: PolicyArgs {
            config: None,
            module: None,
            native: false,
            batch: dataplane::DEFAULT_BATCH as u32,
            no_cache: false,
            limits: LimitArgs::default(),
        },
        packets: None,
        json: false,
    });
    match command {
        Command::Run {
            policy,
            packets,
            json,
        } => cmd_run(&policy, packets.as_deref(), json),
        Command::Check { policy, packets } => cmd_check(&policy, packets.as_deref()),
        Command::Info { module } => cmd_info(module.as_deref()),
        Command::Replay {
            policy,
            pcap,
            out,
            drops,
            ambiguous,
            src_vpc,
            vni,
            skip_policy,
            json,
        } => cmd_replay(
            &policy,
            &ReplayArgs {
                pcap,
                out,
                drops,
                ambiguous,
                src_vpc,
                vni,
                skip_policy,
                json,
            },
        ),
        Command::Test {
            module,
            cases,
            native,
            no_cache,
        } => {
            if native {
                let dirs: Vec<PathBuf> = module.into_iter().chain(cases).collect();
                cmd_test(None, &dirs, no_cache)
            } else {
                cmd_test(module.as_deref(), &cases, no_cache)
            }
        }
        Command::Diff {
            old,
            new,
            config,
            traffic,
            json,
        } => {
            let config_text = LimitArgs::default().read_config(&config)?;
            let name = config.display().to_string();
            let read =
                |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
            let (old_bytes, new_bytes) = (read(&old)?, read(&new)?);
            let (old_name, new_name) = (old.display().to_string(), new.display().to_string());
            cmd_diff(
                Side {
                    module: &old_bytes,
                    module_name: &old_name,
                    config: &config_text,
                    config_name: &name,
                },
                Side {
                    module: &new_bytes,
                    module_name: &new_name,
                    config: &config_text,
                    config_name: &name,
                },
                &traffic,
                json,
            )
        }
        Command::Explain {
            config,
            module,
            packet,
            json,
        } => cmd_explain(&config, module.as_deref(), &packet, json),
        Command::Gen {
            peerings,
            packets,
            seed,
            out,
        } => cmd_gen(peerings as usize, packets as usize, seed, &out),
        Command::Serve(args) => cmd_serve(&args),
        Command::Bench { peerings, module } => cmd_bench(peerings as usize, module.as_deref()),
        Command::Status { admin } => client_answer(admin.client()?.status()?),
        Command::Swap {
            module,
            config,
            if_match,
            dry_run,
            traffic,
            admin,
        } => {
            let client = admin.client()?;
            let config_name = config.as_ref().map(|c| c.display().to_string());
            let config = config
                .as_deref()
                .map(|p| LimitArgs::default().read_config(p))
                .transpose()?;
            if dry_run {
                let admin::Serving {
                    module: serving,
                    config: serving_config,
                    etag,
                } = client.serving()?;
                println!("flowgate swap --dry-run: against the release serving, ETag {etag}");
                let new_module = match &module {
                    Some(path) => {
                        fs::read(path).with_context(|| format!("reading {}", path.display()))?
                    }
                    None => serving.clone(),
                };
                let new_module_name = match &module {
                    Some(path) => path.display().to_string(),
                    None => "the module in force".to_owned(),
                };
                let (new_config, new_config_name) = match (config, config_name) {
                    (Some(text), Some(name)) => (text, name),
                    _ => (
                        serving_config.clone(),
                        "the configuration in force".to_owned(),
                    ),
                };
                return cmd_diff(
                    Side {
                        module: &serving,
                        module_name: "the module in force",
                        config: &serving_config,
                        config_name: "the configuration in force",
                    },
                    Side {
                        module: &new_module,
                        module_name: &new_module_name,
                        config: &new_config,
                        config_name: &new_config_name,
                    },
                    &traffic,
                    false,
                );
            }
            let module = module
                .map(|path| fs::read(&path).with_context(|| format!("reading {}", path.display())))
                .transpose()?;
            // Swap against the release this command saw: a change made meanwhile by someone
            // else is refused (412), not silently overwritten.
            let if_match = match if_match {
                Some(tag) => tag,
                None => {
                    let status = client.status()?;
                    match status.etag {
                        Some(tag) if status.status == 200 => tag,
                        _ => return client_answer(status),
                    }
                }
            };
            match module {
                Some(bytes) => {
                    client_answer(client.swap_module(&bytes, config.as_deref(), Some(&if_match))?)
                }
                None => client_answer(
                    client.swap_config(config.as_deref().unwrap_or_default(), Some(&if_match))?,
                ),
            }
        }
        Command::Rollback { admin } => client_answer(admin.client()?.rollback()?),
    }
}

/// A policy ready to judge, and how to describe it.
struct Loaded {
    policy: Box<dyn Policy>,
    describe: String,
    /// The engine and its epoch ticker, which must outlive the policy's deadlines.
    _runtime: Option<Runtime>,
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_policy(args: &PolicyArgs, config: &str, config_name: &str) -> Result<Loaded> {
    if args.native {
        let policy = NativePolicy::new(config, Some(config_name))
            .map_err(|e| anyhow::anyhow!("configuration refused: {e}"))?;
        return Ok(Loaded {
            policy: Box::new(policy),
            describe: "native policy library (no Wasm)".into(),
            _runtime: None,
        });
    }
    let runtime = Runtime::new(args.limits.limits(), cache_dir(args.no_cache))?;
    let (bytes, module_name) = module_bytes(args.module.as_deref())?;
    let side = Side {
        module: &bytes,
        module_name: &module_name,
        config,
        config_name,
    };
    let module = load_side(&runtime, &side)?;
    let policy = start_side(&runtime, &module, &side)?;
    let info = policy.info();
    let describe = format!(
        "module {} {} (WIT {}, sha256 {})",
        info.name,
        info.version,
        info.wit_version,
        &hex(&module.digest())[..16]
    );
    Ok(Loaded {
        policy: Box::new(policy),
        describe,
        _runtime: Some(runtime),
    })
}

fn module_bytes(path: Option<&Path>) -> Result<(Vec<u8>, String)> {
    match path {
        Some(path) => {
            let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok((bytes, path.display().to_string()))
        }
        None => Ok((
            flowgate_host::DEFAULT_MODULE.to_vec(),
            "the bundled module".into(),
        )),
    }
}

fn cmd_run(args: &PolicyArgs, packets: Option<&Path>, json: bool) -> Result<ExitCode> {
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
            Err(_) => counters.count_drop(MALFORMED, 1),
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
        println!("{out}");
    } else {
        print_summary(&counters, &loaded.describe, &config_name, &trace_name, pps);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(c: &Counters, policy: &str, config: &str, trace: &str, pps: f64) {
    println!("flowgate run");
    println!("  policy   {policy}");
    println!("  config   {config}");
    println!("  packets  {trace}");
    println!();
    let row = |name: &str, n: u64| println!("  {name:<28}{n:>10}");
    row("packets", c.packets);
    row("batches", c.batches);
    row("allow", c.allowed);
    row("allow-ambiguous", c.ambiguous);
    row("drop", c.dropped);
    for (reason, n) in &c.drops {
        row(&format!("  {reason}"), *n);
    }
    println!("  forwarded per destination VPC");
    for (vpc, n) in &c.forwarded {
        row(&format!("  {vpc}"), *n);
    }
    println!("  {:<28}{:>10.0}", "packets per second", pps);
}

fn cmd_check(args: &PolicyArgs, packets: Option<&Path>) -> Result<ExitCode> {
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
const MAX_LINE: usize = 64 << 10;

fn flush_check(
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
                None => serde_json::json!({"verdict": "drop", "reason": dataplane::POLICY_FAULT}),
            },
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn cmd_info(module: Option<&Path>) -> Result<ExitCode> {
    let runtime = runtime(false)?;
    let (bytes, name) = module_bytes(module)?;
    let loaded = runtime
        .load(&bytes)
        .with_context(|| format!("{name} refused"))?;
    let policy =
        WasmPolicy::new(&runtime, &loaded, "").map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let info = policy.info();
    println!(
        "{}",
        serde_json::json!({
            "name": info.name, "version": info.version, "wit_version": info.wit_version,
            "sha256": hex(&loaded.digest()), "bytes": bytes.len(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_gen(peerings: usize, count: usize, seed: u64, out: &Path) -> Result<ExitCode> {
    let yaml = synth::config_yaml(Scale::with_peerings(peerings, seed));
    let config = flowgate_policy::parse(&yaml, None)
        .map_err(|e| anyhow::anyhow!("generated config refused: {e}"))?;
    let table = flowgate_policy::Table::build(&config);
    let mut lines = String::new();
    for p in synth::packets(&config, count, seed.wrapping_add(1)) {
        lines.push_str(&packet_json(table.catalog(), &p).to_string());
        lines.push('\n');
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let header = format!(
        "# Generated by `flowgate gen --peerings {peerings} --packets {count} --seed {seed} --out {}`.\n",
        out.display()
    );
    fs::write(out.join("config.yaml"), header + &yaml)
        .with_context(|| format!("writing {}", out.display()))?;
    fs::write(out.join("packets.jsonl"), lines)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn client_answer(answer: admin::Answer) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&answer.body)?);
    Ok(if (200..300).contains(&answer.status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_serve(args: &ServeArgs) -> Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let read_config = || -> Result<String> {
        match &args.config {
            Some(path) => args.limits.read_config(path),
            None => Ok(flowgate_host::DEFAULT_CONFIG.to_owned()),
        }
    };
    let config = read_config()?;
    let (module, module_name) = module_bytes(args.module.as_deref())?;
    let workers = args
        .workers
        .map_or_else(|| Options::default().workers, |w| w as usize);
    // The admin API's token is read, and a TCP address without one refused, before anything
    // starts.
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(admin::read_token_file)
        .transpose()?;
    let admin_endpoint = args.admin.clone().unwrap_or_else(Endpoint::default_socket);
    if matches!(admin_endpoint, Endpoint::Tcp(_)) && admin_token.is_none() {
        bail!(
            "--admin {admin_endpoint} is TCP: it needs --admin-token-file FILE (or listen on a Unix socket, --admin unix:PATH)"
        );
    }
    let runtime = Runtime::with_engine(
        args.limits.limits(),
        cache_dir(args.no_cache),
        EngineOptions::for_workers(workers),
    )?;
    let options = Options {
        workers,
        batch: args.batch as usize,
        on_fault: match args.on_fault {
            FaultMode::FailClosed => OnFault::FailClosed,
            FaultMode::Previous => OnFault::Previous,
        },
        fault_limit: args.fault_limit as usize,
        fault_window: std::time::Duration::from_secs_f64(args.fault_window),
        record_batches: false,
        max_config_bytes: usize::try_from(args.limits.max_config_bytes).unwrap_or(usize::MAX),
    };
    let gateway = Gateway::new(runtime, &module, &config, options)
        .with_context(|| format!("starting with {module_name}"))?;

    // The traffic: a trace, or packets generated from the configuration's prefixes, or a
    // socket.
    let catalog = gateway.current().catalog.clone();
    let vxlan = match args.source {
        SourceKind::Vxlan => {
            let file = args
                .endpoints_file
                .as_ref()
                .map(|p| Ok::<_, anyhow::Error>((p.display().to_string(), read_text(p)?)))
                .transpose()?;
            let endpoints = flowgate_host::vxlan::Endpoints::parse(
                &args.endpoints,
                file.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            )?;
            let socket = std::net::UdpSocket::bind(&args.listen)
                .with_context(|| format!("--listen {}", args.listen))?;
            // Room for bursts while workers are busy; the kernel caps it at net.core.rmem_max.
            let _ = nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::RcvBuf,
                &(8 << 20),
            );
            Some((socket, Arc::new(endpoints)))
        }
        _ => None,
    };
    let packets: Vec<Packet> = match args.source {
        SourceKind::Vxlan => Vec::new(),
        SourceKind::Replay => {
            let text = match &args.packets {
                Some(path) => read_text(path)?,
                None => flowgate_host::DEFAULT_PACKETS.to_owned(),
            };
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| parse_packet(l, &catalog).ok())
                .collect()
        }
        SourceKind::Gen => {
            let parsed = flowgate_policy::parse(&config, None).map_err(|e| {
                anyhow::anyhow!("--source gen reads the configuration natively: {e}")
            })?;
            synth::packets(&parsed, 1 << 16, 0x5eed)
        }
    };
    if packets.is_empty() && vxlan.is_none() {
        bail!("no packets to serve");
    }
    let packets: Arc<[Packet]> = packets.into();

    let admin = admin::AdminServer::start(
        gateway.clone(),
        admin::AdminOptions::new(admin_endpoint, admin_token),
    )?;
    eprintln!(
        "flowgate: serving generation 1 with {} worker(s); admin API on {}",
        gateway.options().workers,
        admin.endpoint()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let workers = gateway.options().workers;
    let per_worker_rate = args.rate.div_ceil(workers as u64);
    if let Some((socket, _)) = &vxlan {
        eprintln!(
            "flowgate: receiving VXLAN on udp://{}",
            socket.local_addr()?
        );
    }
    let handles: Vec<_> = (0..workers)
        .map(|id| -> Result<_> {
            let (gateway, stop, packets) = (gateway.clone(), stop.clone(), packets.clone());
            let offset = id * packets.len().max(1) / workers;
            let socket = match &vxlan {
                Some((socket, endpoints)) => Some((socket.try_clone()?, endpoints.clone())),
                None => None,
            };
            let batch = gateway.options().batch;
            Ok(std::thread::Builder::new()
                .name(format!("flowgate-worker-{id}"))
                .spawn(move || match socket {
                    Some((socket, endpoints)) => {
                        match flowgate_host::vxlan::VxlanSource::new(
                            socket,
                            endpoints,
                            stop.clone(),
                            batch,
                        ) {
                            Ok(mut source) => gateway.run_worker(id, &mut source, &stop),
                            Err(e) => eprintln!("flowgate: worker {id}: {e:#}"),
                        }
                    }
                    None => {
                        let mut source = Replay::new(packets, offset, per_worker_rate, None);
                        gateway.run_worker(id, &mut source, &stop);
                    }
                })?)
        })
        .collect::<Result<_>>()?;

    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if args
            .duration
            .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            stop.store(true, Ordering::Relaxed);
        }
        if hup.swap(false, Ordering::Relaxed) {
            eprintln!("flowgate: SIGHUP: re-reading the module and configuration files");
            let reread = read_config().and_then(|config| match &args.module {
                Some(path) => Ok((
                    Some(fs::read(path).with_context(|| format!("reading {}", path.display()))?),
                    config,
                )),
                None => Ok((None, config)),
            });
            match reread {
                Ok((module, config)) => {
                    // Published or refused, the gateway logged it; unchanged, say so here.
                    if let Ok(None) = gateway.reload(module.as_deref(), &config) {
                        eprintln!(
                            "flowgate: SIGHUP: the module and configuration files are unchanged: nothing to publish, generation {} keeps serving",
                            gateway.current().generation
                        );
                    }
                }
                Err(e) => eprintln!("flowgate: SIGHUP: {e:#}; the running release keeps serving"),
            }
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    drop(admin);
    println!("{}", admin::status(&gateway));
    Ok(ExitCode::SUCCESS)
}

/// The median time per call of `f`, over 7 runs of at least 100 ms each.
fn time_per_call(mut f: impl FnMut()) -> std::time::Duration {
    let mut runs = Vec::with_capacity(7);
    for _ in 0..7 {
        let start = Instant::now();
        let mut calls = 0u32;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            f();
            calls += 1;
        }
        runs.push(start.elapsed() / calls);
    }
    runs.sort_unstable();
    runs[runs.len() / 2]
}

fn cmd_bench(peerings: usize, module: Option<&Path>) -> Result<ExitCode> {
    let yaml = synth::config_yaml(Scale::with_peerings(peerings, 42));
    let config = flowgate_policy::parse(&yaml, None)
        .map_err(|e| anyhow::anyhow!("generated config refused: {e}"))?;
    let table = flowgate_policy::Table::build(&config);
    let packets = synth::packets(&config, 4096, 7);
    let runtime = Runtime::new(Limits::default(), None)?;
    let (bytes, name) = module_bytes(module)?;
    let loaded = runtime
        .load(&bytes)
        .with_context(|| format!("{name} refused"))?;
    let mut wasm =
        WasmPolicy::new(&runtime, &loaded, &yaml).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let noop = time_per_call(|| {
        let _ = wasm.judge(&[], &mut []);
    });
    println!(
        "flowgate bench: {peerings} peerings ({} VPCs), {} (median of 7 runs)",
        config.vpcs.len(),
        wasm.info().name
    );
    println!(
        "  no-op call (empty judge-packed): {:.0} ns",
        noop.as_nanos()
    );
    println!(
        "  {:>6}  {:>12}  {:>12}  {:>10}",
        "batch", "native ns/p", "wasm ns/p", "wasm/native"
    );
    for n in [1usize, 32, 256, 4096] {
        let batch = &packets[..n];
        let mut out = vec![Verdict::default(); n];
        let native = time_per_call(|| table.lookup_batch(std::hint::black_box(batch), &mut out));
        let mut wasm_out = vec![Verdict::default(); n];
        let mut failed = false;
        let sandboxed = time_per_call(|| {
            failed |= wasm
                .judge(std::hint::black_box(batch), &mut wasm_out)
                .is_err()
        });
        if failed || wasm_out != out {
            bail!("the module's verdicts differ from the native library's at batch {n}");
        }
        let (native, sandboxed) = (
            native.as_nanos() as f64 / n as f64,
            sandboxed.as_nanos() as f64 / n as f64,
        );
        println!(
            "  {n:>6}  {native:>12.1}  {sandboxed:>12.1}  {:>10.2}",
            sandboxed / native
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The artifact cache's folder, unless `no_cache`.
fn cache_dir(no_cache: bool) -> Option<PathBuf> {
    if no_cache {
        None
    } else {
        Runtime::default_cache_dir()
    }
}

/// The engine, with the artifact cache unless `no_cache`.
fn runtime(no_cache: bool) -> Result<Runtime> {
    Runtime::new(Limits::default(), cache_dir(no_cache))
}

/// The cases under each of `dirs` (a case folder, or a folder of cases); the bundled ones
/// when there are none.
fn collect_cases(dirs: &[PathBuf]) -> Result<Vec<Case>> {
    if dirs.is_empty() {
        return flowgate_host::bundled_cases().map_err(|e| anyhow::anyhow!(e));
    }
    let mut cases = Vec::new();
    for dir in dirs {
        let found = if dir.join("config.yaml").is_file() {
            vec![Case::load(dir).map_err(|e| anyhow::anyhow!(e))?]
        } else {
            Case::load_all(dir).map_err(|e| anyhow::anyhow!(e))?
        };
        if found.is_empty() {
            bail!("{}: no cases (folders holding config.yaml)", dir.display());
        }
        cases.extend(found);
    }
    Ok(cases)
}

fn cmd_test(module: Option<&Path>, dirs: &[PathBuf], no_cache: bool) -> Result<ExitCode> {
    let cases = collect_cases(dirs)?;
    let where_from = if dirs.is_empty() {
        "the bundled cases".to_owned()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let outcomes: Vec<kit::CaseOutcome> = match module {
        Some(module) => {
            let runtime = runtime(no_cache)?;
            let bytes =
                fs::read(module).with_context(|| format!("reading {}", module.display()))?;
            let loaded = runtime
                .load(&bytes)
                .with_context(|| format!("{} refused", module.display()))?;
            println!(
                "flowgate test: {} on {where_from} ({} cases)",
                module.display(),
                cases.len()
            );
            cases
                .iter()
                .map(|case| {
                    kit::run_case(case, |config| kit::start_wasm(&runtime, &loaded, config))
                })
                .collect()
        }
        None => {
            println!(
                "flowgate test: the policy library, natively, on {where_from} ({} cases)",
                cases.len()
            );
            cases
                .iter()
                .map(|case| kit::run_case(case, kit::start_native))
                .collect()
        }
    };
    let mut failed = 0;
    for outcome in &outcomes {
        let what = if outcome.packets > 0 {
            format!("{} packets", outcome.packets)
        } else {
            "refusal".to_owned()
        };
        if outcome.passed() {
            println!("ok    {} ({what})", outcome.name);
        } else {
            failed += 1;
            println!("FAIL  {} ({what})", outcome.name);
            for problem in &outcome.problems {
                for line in problem.lines() {
                    println!("      {line}");
                }
            }
        }
    }
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One side of a diff: a module and the configuration it gets.
struct Side<'a> {
    module: &'a [u8],
    module_name: &'a str,
    config: &'a str,
    config_name: &'a str,
}

fn load_side(runtime: &Runtime, side: &Side<'_>) -> Result<LoadedModule> {
    runtime
        .load(side.module)
        .with_context(|| format!("{} refused", side.module_name))
}

/// A configured instance of `module`; a refused configuration names the file and the module.
fn start_side(runtime: &Runtime, module: &LoadedModule, side: &Side<'_>) -> Result<WasmPolicy> {
    match WasmPolicy::new(runtime, module, side.config) {
        Ok(policy) => Ok(policy),
        Err(StartError::Config(e)) => bail!(
            "{}: configuration refused by {}: {}",
            side.config_name,
            side.module_name,
            e.message
        ),
        Err(e) => Err(e).with_context(|| format!("{} refused", side.module_name)),
    }
}

fn cmd_diff(old: Side<'_>, new: Side<'_>, traffic: &TrafficArgs, json: bool) -> Result<ExitCode> {
    let runtime = runtime(false)?;
    let mut a = start_side(&runtime, &load_side(&runtime, &old)?, &old)?;
    let mut b = start_side(&runtime, &load_side(&runtime, &new)?, &new)?;
    // Traffic: a trace, or packets generated from the old side's configuration.
    let (packets, traffic_name) = match &traffic.packets {
        Some(path) => {
            let mut packets = Vec::new();
            for (n, line) in read_text(path)?.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let p = parse_packet(line, a.catalog())
                    .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
                packets.push(p);
            }
            (packets, path.display().to_string())
        }
        None => {
            let n = traffic.generate.unwrap_or(10_000);
            let config = flowgate_policy::parse(old.config, Some(old.config_name))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (
                synth::packets(&config, n, traffic.seed),
                format!("{n} packets generated (seed {})", traffic.seed),
            )
        }
    };
    let diff = kit::diff(
        &mut a,
        &mut b,
        &packets,
        dataplane::DEFAULT_BATCH,
        traffic.samples,
    )
    .context("a module failed while judging the traffic")?;
    let describe = |p: &WasmPolicy, side: &Side<'_>| {
        format!(
            "{} ({} {}) with {}",
            side.module_name,
            p.info().name,
            p.info().version,
            side.config_name
        )
    };
    let changed = diff.packets - diff.unchanged;
    if json {
        let changes: Vec<serde_json::Value> = diff
            .changes
            .iter()
            .map(|((from, to), c)| {
                serde_json::json!({
                    "old": from,
                    "new": to,
                    "count": c.count,
                    "samples": c.samples.iter().map(|p| packet_json(a.catalog(), p)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "old": describe(&a, &old),
            "new": describe(&b, &new),
            "traffic": traffic_name,
            "packets": diff.packets,
            "unchanged": diff.unchanged,
            "changed": changed,
            "changes": changes,
        });
        println!("{out}");
    } else {
        println!("flowgate diff: {traffic_name}");
        println!("  old  {}", describe(&a, &old));
        println!("  new  {}", describe(&b, &new));
        println!("  {:<50}{:>10}", "packets", diff.packets);
        println!("  {:<50}{:>10}", "unchanged", diff.unchanged);
        println!("  {:<50}{:>10}", "changed", changed);
        let mut changes: Vec<_> = diff.changes.iter().collect();
        changes.sort_by(|x, y| y.1.count.cmp(&x.1.count).then(x.0.cmp(y.0)));
        for ((from, to), change) in changes {
            println!("  {:<50}{:>10}", format!("{from} -> {to}"), change.count);
            for p in &change.samples {
                println!("      {}", packet_json(a.catalog(), p));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_explain(config: &Path, module: Option<&Path>, text: &str, json: bool) -> Result<ExitCode> {
    let config_text = LimitArgs::default().read_config(config)?;
    let (bytes, module_name) = module_bytes(module)?;
    let runtime = runtime(false)?;
    let config_name = config.display().to_string();
    let side = Side {
        module: &bytes,
        module_name: &module_name,
        config: &config_text,
        config_name: &config_name,
    };
    let mut policy = start_side(&runtime, &load_side(&runtime, &side)?, &side)?;
    let packet = parse_packet_text(text, policy.catalog()).map_err(|e| anyhow::anyhow!(e))?;
    let e = policy
        .explain(&packet)
        .with_context(|| format!("{module_name} failed to explain"))?;
    if json {
        let matches = |ms: &[flowgate_policy::explain::EntryMatch]| -> Vec<serde_json::Value> {
            ms.iter()
                .map(|m| serde_json::json!({"block": m.block, "entry": m.entry, "miss": m.miss}))
                .collect()
        };
        let out = serde_json::json!({
            "packet": packet_json(policy.catalog(), &packet),
            "verdict": verdict_json(policy.catalog(), e.verdict),
            "src_vpc": e.src_vpc,
            "peerings": e.peerings.iter().map(|p| serde_json::json!({
                "peering": p.peering,
                "remote": p.remote,
                "admits": p.admits,
                "source": matches(&p.source),
                "destination": matches(&p.destination),
            })).collect::<Vec<_>>(),
            "notes": e.notes,
        });
        println!("{out}");
    } else {
        println!("packet: {text}");
        print!("{}", e.render(policy.catalog()));
    }
    Ok(ExitCode::SUCCESS)
}

struct ReplayArgs {
    pcap: PathBuf,
    out: Option<PathBuf>,
    drops: Option<PathBuf>,
    ambiguous: Option<PathBuf>,
    src_vpc: Option<String>,
    vni: Option<u32>,
    skip_policy: bool,
    json: bool,
}

fn cmd_replay(policy_args: &PolicyArgs, args: &ReplayArgs) -> Result<ExitCode> {
    use flowgate_host::replay::{self, CaptureReader, CaptureWriter, Outputs};
    use std::io::IsTerminal;

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
    distinct_paths(
        &args.pcap,
        &[
            ("--out", args.out.as_deref()),
            ("--drops", args.drops.as_deref()),
            ("--ambiguous", args.ambiguous.as_deref()),
        ],
    )?;
    let mut input = CaptureReader::open(&args.pcap)?;
    let create = |p: &Option<PathBuf>| p.as_deref().map(CaptureWriter::create).transpose();
    let mut outputs = Outputs {
        allowed: create(&args.out)?,
        ambiguous: create(&args.ambiguous)?,
        dropped: create(&args.drops)?,
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
    let report = replay::replay(
        loaded.policy.as_mut(),
        &mut input,
        &mut outputs,
        replay::Options {
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
        println!("{out}");
    } else {
        print_summary(
            &report.counters,
            &describe,
            &config_name,
            &pcap_name,
            pps as f64,
        );
        println!("  frames read                 {:>10}", report.frames);
        for (name, n) in &written {
            println!(
                "  {:<28}{:>10}",
                format!("written to --{name}"),
                n.as_u64().unwrap_or_default()
            );
        }
        println!(
            "  per phase, frames per second: parse {}, judge {}, write {}",
            per_second(report.timings.parse),
            per_second(report.timings.judge),
            per_second(report.timings.write)
        );
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

/// Refuses outputs that would overwrite the input or each other: the same path, however
/// written, or another name of the same file.
fn distinct_paths(input: &Path, outputs: &[(&str, Option<&Path>)]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // A file's identity: device and inode when it exists, else its resolved path.
    let identity = |path: &Path| -> (Option<(u64, u64)>, PathBuf) {
        let meta = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let resolved = fs::canonicalize(path).unwrap_or_else(|_| {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            let dir = parent.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            fs::canonicalize(&dir)
                .unwrap_or(dir)
                .join(path.file_name().unwrap_or_default())
        });
        (meta, resolved)
    };
    let same = |a: &(Option<(u64, u64)>, PathBuf), b: &(Option<(u64, u64)>, PathBuf)| {
        matches!((a.0, b.0), (Some(x), Some(y)) if x == y) || a.1 == b.1
    };
    let mut seen = vec![("--pcap", identity(input))];
    for (flag, path) in outputs {
        let Some(path) = path else { continue };
        let id = identity(path);
        if let Some((other, _)) = seen.iter().find(|(_, s)| same(s, &id)) {
            bail!(
                "{flag} {} is the same file as {other}: refused, nothing was written",
                path.display()
            );
        }
        seen.push((flag, id));
    }
    Ok(())
}
