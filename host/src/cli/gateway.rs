//! A gateway and its clients: `serve`, `status`, `swap`, `rollback`, `watch` and `shadow`.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use flowgate_host::admin;
use flowgate_host::admin::Endpoint;
use flowgate_host::gateway::serve::{Controls, ModuleFile, Traffic, serve};
use flowgate_host::gateway::watch::ShadowGate;
use flowgate_host::gateway::{
    Gateway, ModuleBytes, OnFault, Options, ShadowBudget as Budget, ShadowTotals,
};
use flowgate_host::oci::{SignatureError, detached_path, read_detached};
use flowgate_host::wasm::{EngineOptions, Runtime};
use flowgate_policy::Packet;
use flowgate_policy::json::{parse_packet, parse_packet_text};
use flowgate_policy::synth::{self};

use super::author::diff;
use super::*;

/// Prints the gateway's reply; a refusal fails the command.
fn print_reply(reply: admin::Reply) -> Result<ExitCode> {
    outln!("{}", serde_json::to_string_pretty(&reply.body)?)?;
    Ok(if (200..300).contains(&reply.status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl StatusArgs {
    pub fn execute(self) -> Result<ExitCode> {
        print_reply(self.admin.client()?.status()?)
    }
}

impl RollbackArgs {
    pub fn execute(self) -> Result<ExitCode> {
        print_reply(self.admin.client()?.rollback()?)
    }
}

impl WatchArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let client = self.admin.client()?;
        let reply = match self.action {
            WatchAction::Resume => client.watch("resume")?,
            WatchAction::Pause => client.watch("pause")?,
        };
        if reply.status == 409 {
            eprintln!(
                "flowgate: a gateway watches a tag when started with `serve --module oci://HOST/REPO:TAG --pull-interval SECS`"
            );
        }
        print_reply(reply)
    }
}

/// The admin API's refusal to listen, in the command line's words: the flags that change it.
fn admin_refused(e: admin::ListenError) -> anyhow::Error {
    match e {
        admin::ListenError::NoToken { addr } => anyhow::anyhow!(
            "--admin {} is TCP: it needs --admin-token-file FILE (or listen on a Unix socket, --admin unix:PATH)",
            Endpoint::Tcp(addr)
        ),
        e => e.into(),
    }
}

impl ServeArgs {
    pub fn execute(self) -> Result<ExitCode> {
        serve_gateway(&self)
    }
}

fn serve_gateway(args: &ServeArgs) -> Result<ExitCode> {
    use std::sync::Arc;

    let read_config = || -> Result<String> {
        match &args.config {
            Some(path) => args.limits.read_config(path),
            None => Ok(flowgate_host::DEFAULT_CONFIG.to_owned()),
        }
    };
    let config = read_config()?;
    let (module, module_name, signer) = signed_module_bytes(args.module.as_deref())?;
    let workers = args
        .workers
        .map_or_else(|| Options::default().workers, |w| w as usize);
    // The admin API's token is read, and a TCP address without one refused, before anything
    // starts.
    let (admin_token, named_tokens) = match args.admin_token_file.as_deref() {
        None => (None, Vec::new()),
        Some(path) => match admin::read_server_tokens(path)? {
            admin::ServerTokens::One(token) => (Some(token), Vec::new()),
            admin::ServerTokens::Named(named) => (None, named),
        },
    };
    // The audit log is opened before anything starts: a gateway that cannot record who
    // changes it does not serve.
    let audit = match &args.audit_log {
        Some(path) => admin::AuditLog::open(path)?,
        None => admin::AuditLog::log_only(),
    };
    let admin_endpoint = args.admin.clone().unwrap_or_else(Endpoint::default_socket);
    let admin_options = admin::AdminOptions {
        registry: REGISTRY.get().cloned().unwrap_or_default(),
        cache: oci_cache(),
        named_tokens,
        audit: Arc::new(audit),
        ..admin::AdminOptions::new(admin_endpoint, admin_token)
    };
    admin_options.check().map_err(admin_refused)?;
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
        worker_nice: args.worker_nice,
        trust: signing().trust.clone(),
        allow_unsigned_local: signing().allow_unsigned_local,
        shadow_share: args.shadow_share,
    };
    let from_registry = args
        .module
        .as_ref()
        .map(|m| m.to_string_lossy().into_owned())
        .filter(|m| flowgate_host::oci::Reference::is_reference(m));
    // A pulled module's name is its reference, pinned to the digest it was pulled as.
    let pinned = from_registry
        .as_ref()
        .map(|_| flowgate_host::oci::Reference::parse(&module_name))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let start = ModuleBytes {
        bytes: &module,
        pulled: pinned.as_ref().and_then(|r| Some((r, r.digest?))),
        signer: signer.as_ref(),
    };
    let gateway = Gateway::new(runtime, start, &config, options)
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
            let endpoints = flowgate_host::io::vxlan::Endpoints::parse(
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
    let traffic = match vxlan {
        Some((socket, endpoints)) => {
            tracing::info!("receiving VXLAN on udp://{}", socket.local_addr()?);
            Traffic::Vxlan { socket, endpoints }
        }
        None => Traffic::Trace {
            packets: packets.into(),
            rate: args.rate,
        },
    };
    if args.pull_shadow.is_some() && args.shadow_share == 0.0 {
        bail!(
            "--pull-shadow judges each new digest on a share of the batches, and --shadow-share 0 gives it none"
        );
    }
    // The tag is followed from before the admin API answers, so that no operator's change can
    // come before the watch that it must pause.
    let watched = match (&from_registry, args.pull_interval) {
        (Some(text), Some(interval)) => {
            let reference =
                flowgate_host::oci::Reference::parse(text).map_err(anyhow::Error::msg)?;
            if reference.digest.is_some() {
                bail!(
                    "--pull-interval watches a tag; {text} is pinned to a digest and never moves"
                );
            }
            gateway.watch_tag(&reference)?;
            Some((reference, interval))
        }
        (None, Some(_)) => bail!("--pull-interval needs --module oci://HOST/REPO:TAG"),
        _ => None,
    };
    let admin = admin::AdminServer::start(gateway.clone(), admin_options).map_err(admin_refused)?;
    tracing::info!(
        "serving generation 1 with {} worker(s); admin API on {}",
        gateway.options().workers,
        admin.endpoint()
    );
    // SIGHUP reads the files again: the configuration, and the module when it is a file. A
    // module from a registry is not pulled again here: its tag is the watch's to follow, and
    // the operator's to change (`flowgate swap oci://...`).
    let reread_gateway = gateway.clone();
    let mut reread = || -> Result<(Option<ModuleFile>, String)> {
        let config = read_config()?;
        let module = match &args.module {
            Some(_) if from_registry.is_some() => None,
            Some(path) => match read_signed_module(path) {
                Ok((bytes, _, signer)) => Some((bytes, signer)),
                // Refused for its signature: counted and logged as the gateway's refusal.
                Err(e) => match e.downcast::<SignatureError>() {
                    Ok(e) => {
                        let e = reread_gateway.refuse_own_signature(
                            "SIGHUP's swap",
                            "SIGHUP: reload",
                            e,
                        );
                        return Err(e.into());
                    }
                    Err(e) => return Err(e),
                },
            },
            None => None,
        };
        Ok((module, config))
    };
    // Watching a tag: in a thread of its own, off the packet path, until serving stops.
    let watching = Arc::new(AtomicBool::new(false));
    let watcher = match watched {
        Some((reference, interval)) => {
            let (gateway, stop) = (gateway.clone(), watching.clone());
            let registry =
                flowgate_host::oci::Registry::new(REGISTRY.get().cloned().unwrap_or_default());
            let cache = oci_cache();
            let gate = args.pull_shadow.map(|seconds| ShadowGate {
                judge_for: std::time::Duration::from_secs_f64(seconds),
                budget: budget(args.max_changed, args.max_changed_share),
            });
            match &gate {
                Some(gate) => {
                    tracing::info!(reference = %reference, "watching {reference} every {interval} s; each new digest is judged as a shadow for {} s first and promoted only with {}", gate.judge_for.as_secs_f64(), gate.budget)
                }
                None => {
                    tracing::info!(reference = %reference, "watching {reference} every {interval} s")
                }
            }
            Some(
                std::thread::Builder::new()
                    .name("flowgate-watch".into())
                    .spawn(move || {
                        flowgate_host::gateway::watch::watch(
                            &gateway,
                            &registry,
                            cache.as_ref(),
                            &reference,
                            std::time::Duration::from_secs_f64(interval),
                            gate,
                            &stop,
                        )
                    })?,
            )
        }
        None => None,
    };
    // SIGINT and SIGTERM stop serving; SIGHUP reloads.
    let controls = Controls::default();
    for (signal, flag) in [
        (signal_hook::consts::SIGHUP, &controls.reload),
        (signal_hook::consts::SIGINT, &controls.stop),
        (signal_hook::consts::SIGTERM, &controls.stop),
    ] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    let served = serve(
        &gateway,
        traffic,
        args.duration.map(std::time::Duration::from_secs_f64),
        &controls,
        &mut reread,
    );
    // Shutdown does not wait on the registry: the watch stops at once, or, in the middle of a
    // request, is left behind (it starts no swap once `watching` is set) and ends with the
    // process. The admin socket goes first, so a gateway started meanwhile can take it.
    watching.store(true, std::sync::atomic::Ordering::Release);
    drop(admin);
    if let Some(watcher) = watcher {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while !watcher.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if watcher.is_finished() {
            let _ = watcher.join();
        } else {
            tracing::info!("the tag watch is waiting on its registry: not waiting for it");
        }
    }
    served?;
    outln!("{}", admin::status(&gateway))?;
    Ok(ExitCode::SUCCESS)
}

impl SwapArgs {
    /// A new module, configuration or both to a running gateway, made against the release
    /// this command saw; with `--dry-run`, the diff of the verdicts instead.
    pub fn execute(self) -> Result<ExitCode> {
        let SwapArgs {
            module,
            config,
            if_match,
            dry_run,
            shadow,
            max_changed,
            max_changed_share,
            traffic,
            admin,
        } = self;
        let (module, config) = (module.as_deref(), config.as_deref());
        let client = admin.client()?;
        let config_name = config.as_ref().map(|c| c.display().to_string());
        let config = config
            .map(|p| LimitArgs::default().read_config(p))
            .transpose()?;
        if dry_run {
            let admin::Serving {
                module: serving,
                config: serving_config,
                etag,
            } = client.serving()?;
            outln!("flowgate swap --dry-run: against the release serving, ETag {etag}")?;
            let new_module = match &module {
                Some(path) => read_module(path)?.0,
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
            return diff(
                Contender {
                    module: &serving,
                    module_name: "the module in force",
                    config: &serving_config,
                    config_name: "the configuration in force",
                },
                Contender {
                    module: &new_module,
                    module_name: &new_module_name,
                    config: &new_config,
                    config_name: &new_config_name,
                },
                &traffic,
                false,
            );
        }
        // A reference goes to the gateway as it is: the gateway pulls and verifies it itself.
        let reference = module
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| flowgate_host::oci::Reference::is_reference(p));
        // A file's detached signature goes with it (checked here first with --trusted-key,
        // by `read_module`). Without keys, one that cannot be read is left behind, with a
        // warning: the gateway may not need it.
        let signature = match (&reference, module) {
            (None, Some(path)) => upload_signature(path)?,
            _ => None,
        };
        // With --trusted-key, a reference's signatures are checked here too, and the gateway
        // is told the digest checked: a tag moved since is refused there, not pulled anew.
        let checked = match (&reference, &signing().trust) {
            (Some(text), Some(trust)) => {
                let r = flowgate_host::oci::Reference::parse(text).map_err(anyhow::Error::msg)?;
                let registry =
                    flowgate_host::oci::Registry::new(REGISTRY.get().cloned().unwrap_or_default());
                let (_, digest) = registry.manifest(&r)?;
                trust.verify(&registry, &r, digest)?;
                Some(digest.to_string())
            }
            _ => None,
        };
        let module = match reference {
            Some(_) => None,
            None => module
                .map(|path| read_module(path).map(|(bytes, _)| bytes))
                .transpose()?,
        };
        // Swap against the release this command saw: a change made meanwhile by someone
        // else is refused (412), not silently overwritten.
        let if_match = match if_match {
            Some(tag) => tag,
            None => {
                let status = client.status()?;
                match status.etag {
                    Some(tag) if status.status == 200 => tag,
                    _ => return print_reply(status),
                }
            }
        };
        if let Some(seconds) = shadow {
            let budget = budget(max_changed, max_changed_share);
            let staged = match (&reference, &module) {
                (Some(reference), _) => {
                    client.stage_reference(reference, config.as_deref(), Some(&if_match))?
                }
                (None, Some(bytes)) => client.stage_module(
                    bytes,
                    config.as_deref(),
                    Some(&if_match),
                    signature.as_deref(),
                )?,
                (None, None) => {
                    client.stage_config(config.as_deref().unwrap_or_default(), Some(&if_match))?
                }
            };
            if staged.status != 200 {
                return print_reply(staged);
            }
            return rollout_gate(&client, &staged.body["shadow"], seconds, budget);
        }
        if let Some(reference) = reference {
            return print_reply(client.swap_reference(
                &reference,
                checked.as_deref(),
                config.as_deref(),
                Some(&if_match),
            )?);
        }
        match module {
            Some(bytes) => print_reply(match &signature {
                Some(sig) => {
                    client.swap_signed_module(&bytes, sig, config.as_deref(), Some(&if_match))?
                }
                None => client.swap_module(&bytes, config.as_deref(), Some(&if_match))?,
            }),
            None => print_reply(
                client.swap_config(config.as_deref().unwrap_or_default(), Some(&if_match))?,
            ),
        }
    }
}

/// The detached signature file of the module file `path` to send with its upload: none when
/// there is none. With --trusted-key one that cannot be read is an error; without, a warning
/// (the gateway may need none). One too large for the upload's header is an error, naming
/// the file.
fn upload_signature(path: &Path) -> Result<Option<Vec<u8>>> {
    let sig_path = detached_path(path);
    let signature = match read_detached(path) {
        Ok(signature) => signature,
        Err(e) if signing().trust.is_none() => {
            tracing::warn!(path = %sig_path.display(), error = %e, "the detached signature is not sent: it cannot be read");
            None
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", sig_path.display())),
    };
    if let Some(bytes) = &signature
        && bytes.len() > admin::MAX_UPLOAD_SIGNATURE
    {
        bail!(
            "{}: {} bytes; an upload carries a detached signature of at most {} bytes (a flowgate or cosign one is under 1 KiB)",
            sig_path.display(),
            bytes.len(),
            admin::MAX_UPLOAD_SIGNATURE
        );
    }
    Ok(signature)
}

impl ShadowArgs {
    pub fn execute(self) -> Result<ExitCode> {
        match self.action {
            ShadowAction::Stage(args) => args.execute(),
            ShadowAction::Status(args) => args.execute(),
            ShadowAction::Samples(args) => args.execute(),
            ShadowAction::Promote(args) => args.execute(),
            ShadowAction::Discard(args) => args.execute(),
        }
    }
}

impl ShadowStageArgs {
    /// The module (a file with its detached signature, or a reference the gateway pulls), the
    /// configuration or both, staged as the shadow.
    pub fn execute(self) -> Result<ExitCode> {
        let client = self.admin.client()?;
        let config = (self.config.as_deref())
            .map(|p| LimitArgs::default().read_config(p))
            .transpose()?;
        let if_match = self.if_match.as_deref();
        let module = self.module.as_deref();
        let reference = module
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| flowgate_host::oci::Reference::is_reference(p));
        let reply = match (reference, module) {
            (Some(reference), _) => {
                client.stage_reference(&reference, config.as_deref(), if_match)?
            }
            (None, Some(path)) => {
                let (bytes, _) = read_module(path)?;
                let signature = read_detached(path)
                    .with_context(|| format!("reading {}", detached_path(path).display()))?;
                client.stage_module(&bytes, config.as_deref(), if_match, signature.as_deref())?
            }
            (None, None) => client.stage_config(config.as_deref().unwrap_or_default(), if_match)?,
        };
        print_reply(reply)
    }
}

/// `GET /shadow`, answered 200: the shadow; otherwise how the last one ended, on stderr, and
/// `None`.
fn staged_shadow(client: &admin::Client) -> Result<Option<serde_json::Value>> {
    let reply = client.shadow()?;
    if reply.status == 200 {
        return Ok(Some(reply.body["shadow"].clone()));
    }
    eprintln!(
        "flowgate: {}",
        reply.body["error"]
            .as_str()
            .unwrap_or("no shadow release is staged")
    );
    Ok(None)
}

impl ShadowStatusArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let client = self.admin.client()?;
        if self.json {
            return print_reply(client.shadow()?);
        }
        let Some(shadow) = staged_shadow(&client)? else {
            return Ok(ExitCode::FAILURE);
        };
        out!("{}", shadow_table(&shadow))?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A shadow's report as a table: totals, the live by shadow matrix, the top pairs.
fn shadow_table(shadow: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let r = &shadow["report"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (packets, changed) = (n(&r["packets"]), n(&r["changed"]));
    let mut out = String::new();
    let share = if packets > 0 {
        changed as f64 * 100.0 / packets as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "shadow {} ({}), compared with the live release {} on a share of {} of the batches",
        shadow["etag"].as_str().unwrap_or("?"),
        shadow["release"]["cause"].as_str().unwrap_or("?"),
        shadow["base_etag"].as_str().unwrap_or("?"),
        shadow["share"],
    );
    let _ = writeln!(
        out,
        "packets compared  {packets} (in {} batches)",
        n(&r["batches"])
    );
    let _ = writeln!(out, "changed           {changed} ({share:.3} %)");
    let _ = writeln!(out, "to another VPC    {}", n(&r["dst_changed"]));
    let outcomes = flowgate_host::gateway::Outcome::ALL.map(|o| o.as_str());
    let width = outcomes.iter().map(|o| o.len()).max().unwrap_or(0) + 2;
    let _ = write!(out, "\n{:width$}", "live \\ shadow");
    for o in outcomes {
        let _ = write!(out, "{o:>width$}");
    }
    out.push('\n');
    for live in outcomes {
        let row = &r["matrix"][live];
        if row.is_null() {
            continue;
        }
        let _ = write!(out, "{live:width$}");
        for o in outcomes {
            let _ = write!(out, "{:>width$}", n(&row[o]));
        }
        out.push('\n');
    }
    if let Some(pairs) = r["top_pairs"].as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "\nchanged packets by source -> destination VPC");
        for pair in pairs {
            let _ = writeln!(
                out,
                "  {} -> {}  {}",
                pair["src_vpc"].as_str().unwrap_or("?"),
                pair["dst_vpc"].as_str().unwrap_or("?"),
                n(&pair["changed"])
            );
        }
    }
    let samples = r["samples"].as_array().map_or(0, Vec::len);
    if samples > 0 {
        let _ = writeln!(
            out,
            "\n{samples} differing packets kept: `flowgate shadow samples [--explain]`"
        );
    }
    out
}

impl ShadowSamplesArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let client = self.admin.client()?;
        let Some(shadow) = staged_shadow(&client)? else {
            return Ok(ExitCode::FAILURE);
        };
        let empty = Vec::new();
        let samples = shadow["report"]["samples"].as_array().unwrap_or(&empty);
        let mut explainers = match self.explain {
            true => Some(self.explainers(&client, &shadow)?),
            false => None,
        };
        for sample in samples {
            let s = |k: &str| sample[k].as_str().unwrap_or("?").to_owned();
            outln!(
                "{}\n  live:   {}\n  shadow: {}",
                s("packet"),
                s("live"),
                s("shadow")
            )?;
            let Some((live, staged)) = explainers.as_mut() else {
                continue;
            };
            for (who, policy) in [("live", &mut *live), ("shadow", &mut *staged)] {
                let packet = parse_packet_text(&s("packet"), policy.catalog())?;
                let e = policy
                    .explain(&packet)
                    .with_context(|| format!("the {who} release failed to explain"))?;
                outln!("  under the {who} release:")?;
                for line in e.render(policy.catalog()).lines() {
                    outln!("    {line}")?;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The live release's module and configuration (from the gateway) and the shadow's
    /// (the live ones where the shadow kept them, else the files given, checked against the
    /// shadow's sha256), each configured in an instance that explains.
    fn explainers(
        &self,
        client: &admin::Client,
        shadow: &serde_json::Value,
    ) -> Result<(WasmPolicy, WasmPolicy)> {
        let serving = client.serving()?;
        let base = shadow["base_etag"].as_str().unwrap_or_default();
        if serving.etag != base {
            bail!(
                "the live release is {}, not {base}, which the shadow is compared against: stage it again",
                serving.etag
            );
        }
        let release = &shadow["release"];
        let pick = |want: &str, live: Vec<u8>, file: Option<&Path>, what: &str| {
            if hex(&sha2::Sha256::digest(&live)) == want {
                return Ok((live, format!("the live {what}")));
            }
            let Some(file) = file else {
                bail!(
                    "the shadow's {what} (sha256 {want}) is not the live one: give its file with --{what}"
                );
            };
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            if hex(&sha2::Sha256::digest(&bytes)) != want {
                bail!(
                    "{}: not the shadow's {what} (its sha256 is {want})",
                    file.display()
                );
            }
            Ok((bytes, file.display().to_string()))
        };
        use sha2::Digest as _;
        let (module, module_name) = pick(
            release["module"]["sha256"].as_str().unwrap_or_default(),
            serving.module.clone(),
            self.module.as_deref(),
            "module",
        )?;
        let (config, config_name) = pick(
            release["config_sha256"].as_str().unwrap_or_default(),
            serving.config.clone().into_bytes(),
            self.config.as_deref(),
            "config",
        )?;
        let config = String::from_utf8(config).context("the shadow's configuration is not text")?;
        let runtime = runtime(false)?;
        let start = |contender: Contender<'_>| -> Result<WasmPolicy> {
            contender.start(&runtime, &contender.load(&runtime)?)
        };
        let live = start(Contender {
            module: &serving.module,
            module_name: "the live module",
            config: &serving.config,
            config_name: "the live configuration",
        })?;
        let staged = start(Contender {
            module: &module,
            module_name: &module_name,
            config: &config,
            config_name: &config_name,
        })?;
        Ok((live, staged))
    }
}

impl ShadowPromoteArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let client = self.admin.client()?;
        let etag = match self.if_match {
            Some(etag) => etag,
            None => {
                let Some(shadow) = staged_shadow(&client)? else {
                    return Ok(ExitCode::FAILURE);
                };
                shadow["etag"].as_str().unwrap_or_default().to_owned()
            }
        };
        print_reply(client.promote_shadow(&etag)?)
    }
}

impl ShadowDiscardArgs {
    pub fn execute(self) -> Result<ExitCode> {
        let client = self.admin.client()?;
        print_reply(client.discard_shadow(self.if_match.as_deref())?)
    }
}

/// The totals of a shadow report (`GET /shadow`'s `report`). A report missing a count is
/// refused, never read as zero changed.
fn report_totals(report: &serde_json::Value) -> Result<ShadowTotals> {
    let count = |name: &str| {
        report[name]
            .as_u64()
            .with_context(|| format!("the gateway's shadow report has no `{name}` count"))
    };
    Ok(ShadowTotals {
        base_etag: String::new(),
        batches: count("batches")?,
        packets: count("packets")?,
        changed: count("changed")?,
        dst_changed: count("dst_changed")?,
    })
}

/// The budget `--max-changed N` or `--max-changed-share P` sets: none changed when neither is
/// given.
fn budget(max_changed: Option<u64>, max_changed_share: Option<f64>) -> Budget {
    match (max_changed, max_changed_share) {
        (_, Some(share)) => Budget::Share(share),
        (Some(n), None) => Budget::Packets(n),
        (None, None) => Budget::Packets(0),
    }
}

/// `swap --shadow`: lets the staged shadow judge live traffic for `seconds`, prints its report,
/// and promotes exactly that shadow when it stayed within `budget`; otherwise discards it and
/// fails.
fn rollout_gate(
    client: &admin::Client,
    staged: &serde_json::Value,
    seconds: f64,
    budget: Budget,
) -> Result<ExitCode> {
    let etag = staged["etag"].as_str().unwrap_or_default().to_owned();
    eprintln!("flowgate: shadow {etag} staged; judging live traffic for {seconds} s");
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    let Some(shadow) = staged_shadow(client)? else {
        return Ok(ExitCode::FAILURE);
    };
    if shadow["etag"].as_str() != Some(etag.as_str()) {
        bail!(
            "another shadow ({}) replaced {etag} meanwhile: nothing promoted",
            shadow["etag"]
        );
    }
    out!("{}", shadow_table(&shadow))?;
    let report = &shadow["report"];
    let totals = match report_totals(report) {
        Ok(totals) => totals,
        Err(e) => {
            client.discard_shadow(Some(&etag))?;
            return Err(e.context(format!("the shadow {etag} is discarded")));
        }
    };
    let (packets, changed) = (totals.packets, totals.changed);
    if packets == 0 {
        eprintln!("flowgate: the shadow judged no packets: nothing to go by");
    }
    if !budget.admits(&totals) {
        let discarded = client.discard_shadow(Some(&etag))?;
        eprintln!(
            "flowgate: {changed} of {packets} packets changed, beyond the budget ({budget}): the shadow is discarded ({})",
            discarded.status
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "flowgate: {changed} of {packets} packets changed, within the budget ({budget}): promoting {etag}"
    );
    print_reply(client.promote_shadow(&etag)?)
}
