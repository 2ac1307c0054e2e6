//! The policy author's commands: `test`, `diff`, `explain`, `info`, `push`, `pull` and
//! `verify` (`keygen` and `sign` are in `sign.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use flowgate_host::Policy;
use flowgate_host::dataplane::{self};
use flowgate_host::hex;
use flowgate_host::kit;
use flowgate_host::wasm::WasmPolicy;
use flowgate_policy::cases::Case;
use flowgate_policy::json::{explanation_json, packet_json, parse_packet, parse_packet_text};
use flowgate_policy::synth::{self};

use super::*;

impl InfoArgs {
    pub fn execute(self) -> Result<ExitCode> {
        info(self.module.as_deref())
    }
}

fn info(module: Option<&Path>) -> Result<ExitCode> {
    let runtime = runtime(false)?;
    let (bytes, name) = module_bytes(module)?;
    let loaded = runtime
        .load(&bytes)
        .with_context(|| format!("{name} refused"))?;
    let policy =
        WasmPolicy::new(&runtime, &loaded, "").map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let info = policy.info();
    outln!(
        "{}",
        serde_json::json!({
            "name": info.name, "version": info.version, "wit_version": info.wit_version,
            "sha256": hex(&loaded.digest()), "bytes": bytes.len(),
        })
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The cases under each of `dirs` (a case folder, or a folder of cases); the bundled ones
/// when there are none.
pub fn collect_cases(dirs: &[PathBuf]) -> Result<Vec<Case>> {
    if dirs.is_empty() {
        return Ok(flowgate_host::bundled_cases()?);
    }
    let mut cases = Vec::new();
    for dir in dirs {
        let found = if dir.join("config.yaml").is_file() {
            vec![Case::load(dir)?]
        } else {
            Case::load_all(dir)?
        };
        if found.is_empty() {
            bail!("{}: no cases (folders holding config.yaml)", dir.display());
        }
        cases.extend(found);
    }
    Ok(cases)
}

impl TestArgs {
    /// With `--native`, every path given is a case folder.
    pub fn execute(self) -> Result<ExitCode> {
        if self.native {
            let dirs: Vec<PathBuf> = self.module.into_iter().chain(self.cases).collect();
            test(None, &dirs, self.no_cache)
        } else {
            test(self.module.as_deref(), &self.cases, self.no_cache)
        }
    }
}

fn test(module: Option<&Path>, dirs: &[PathBuf], no_cache: bool) -> Result<ExitCode> {
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
            let bytes = read_module(module)?.0;
            let loaded = runtime
                .load(&bytes)
                .with_context(|| format!("{} refused", module.display()))?;
            outln!(
                "flowgate test: {} on {where_from} ({} cases)",
                module.display(),
                cases.len()
            )?;
            cases
                .iter()
                .map(|case| {
                    kit::run_case(case, |config| kit::start_wasm(&runtime, &loaded, config))
                })
                .collect()
        }
        None => {
            outln!(
                "flowgate test: the policy library, natively, on {where_from} ({} cases)",
                cases.len()
            )?;
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
            outln!("ok    {} ({what})", outcome.name)?;
        } else {
            failed += 1;
            outln!("FAIL  {} ({what})", outcome.name)?;
            for problem in &outcome.problems {
                for line in problem.lines() {
                    outln!("      {line}")?;
                }
            }
        }
    }
    outln!("{} passed, {failed} failed", outcomes.len() - failed)?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl DiffArgs {
    /// Both modules get the same configuration.
    pub fn execute(self) -> Result<ExitCode> {
        let config = LimitArgs::default().read_config(&self.config)?;
        let config_name = self.config.display().to_string();
        let (old, old_name) = read_module(&self.old)?;
        let (new, new_name) = read_module(&self.new)?;
        let contender = |module, module_name| Contender {
            module,
            module_name,
            config: &config,
            config_name: &config_name,
        };
        diff(
            contender(&old, &old_name),
            contender(&new, &new_name),
            &self.traffic,
            self.json,
        )
    }
}

/// Runs the same traffic through `old` and `new` and prints how the verdicts change.
pub fn diff(
    old: Contender<'_>,
    new: Contender<'_>,
    traffic: &TrafficArgs,
    json: bool,
) -> Result<ExitCode> {
    let runtime = runtime(false)?;
    let mut a = old.start(&runtime, &old.load(&runtime)?)?;
    let mut b = new.start(&runtime, &new.load(&runtime)?)?;
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
    let describe = |p: &WasmPolicy, contender: &Contender<'_>| {
        format!(
            "{} ({} {}) with {}",
            contender.module_name,
            p.info().name,
            p.info().version,
            contender.config_name
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
        outln!("{out}")?;
    } else {
        outln!("flowgate diff: {traffic_name}")?;
        outln!("  old  {}", describe(&a, &old))?;
        outln!("  new  {}", describe(&b, &new))?;
        outln!("  {:<50}{:>10}", "packets", diff.packets)?;
        outln!("  {:<50}{:>10}", "unchanged", diff.unchanged)?;
        outln!("  {:<50}{:>10}", "changed", changed)?;
        let mut changes: Vec<_> = diff.changes.iter().collect();
        changes.sort_by(|x, y| y.1.count.cmp(&x.1.count).then(x.0.cmp(y.0)));
        for ((from, to), change) in changes {
            outln!("  {:<50}{:>10}", format!("{from} -> {to}"), change.count)?;
            for p in &change.samples {
                outln!("      {}", packet_json(a.catalog(), p))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl ExplainArgs {
    pub fn execute(self) -> Result<ExitCode> {
        explain(
            &self.config,
            self.module.as_deref(),
            &self.packet,
            self.json,
        )
    }
}

fn explain(config: &Path, module: Option<&Path>, text: &str, json: bool) -> Result<ExitCode> {
    let config_text = LimitArgs::default().read_config(config)?;
    let (bytes, module_name) = module_bytes(module)?;
    let runtime = runtime(false)?;
    let config_name = config.display().to_string();
    let contender = Contender {
        module: &bytes,
        module_name: &module_name,
        config: &config_text,
        config_name: &config_name,
    };
    let mut policy = contender.start(&runtime, &contender.load(&runtime)?)?;
    let packet = parse_packet_text(text, policy.catalog())?;
    let e = policy
        .explain(&packet)
        .with_context(|| format!("{module_name} failed to explain"))?;
    if json {
        let out = explanation_json(policy.catalog(), &packet, &e);
        outln!("{out}")?;
    } else {
        outln!("packet: {text}")?;
        out!("{}", e.render(policy.catalog()))?;
    }
    Ok(ExitCode::SUCCESS)
}

impl PushArgs {
    /// With --sign-key, the key is read (and decrypted) before anything is pushed.
    pub fn execute(self) -> Result<ExitCode> {
        let key = match &self.sign_key {
            Some(path) => Some(super::sign::read_key(path, &self.passphrase)?),
            None => None,
        };
        push(&self.module, &self.reference, key.as_ref())
    }
}

/// `flowgate push`: the module checked as a flowgate module, then pushed in the CNCF layout;
/// with `key`, then signed for the tag pushed.
fn push(
    module: &Path,
    reference: &str,
    key: Option<&flowgate_host::oci::SigningKey>,
) -> Result<ExitCode> {
    use flowgate_host::oci::{Digest, Reference, Registry};
    let reference = Reference::parse(reference).map_err(anyhow::Error::msg)?;
    let (bytes, name) = read_module(module)?;
    let runtime = runtime(true)?;
    let loaded = runtime
        .load(&bytes)
        .with_context(|| format!("{name} refused: only flowgate policy modules are pushed"))?;
    let (exports, imports) = loaded.interfaces(&runtime);
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [Digest::of(&bytes).to_string()],
        "component": {"exports": exports, "imports": imports},
    });
    let registry = Registry::new(REGISTRY.get().cloned().unwrap_or_default());
    let config = config.to_string();
    let Some(key) = key else {
        let digest = registry.push(&reference, &bytes, config.as_bytes())?;
        tracing::info!(event = "push", reference = %reference, manifest = %digest, "pushed {name}");
        outln!("{}", reference.pinned(digest))?;
        return Ok(ExitCode::SUCCESS);
    };
    // Signed before the tag names it: a gateway watching the tag never sees it unsigned
    // (and quarantines nothing that a signature was about to vouch for).
    let (digest, manifest) = registry.push_untagged(&reference, &bytes, config.as_bytes())?;
    let pinned = reference.pinned(digest);
    outln!("{pinned}")?;
    super::sign::sign_in_registry(&registry, &pinned, key).with_context(|| {
        format!("{pinned} was pushed by digest, but not signed, and not tagged")
    })?;
    let tag = reference.tag.as_deref().unwrap_or_default();
    registry
        .put_manifest(&reference, tag, &manifest, flowgate_host::oci::OCI_MANIFEST)
        .with_context(|| format!("{pinned} was pushed and signed, but not tagged"))?;
    tracing::info!(event = "push", reference = %reference, manifest = %digest, "pushed {name}, signed");
    Ok(ExitCode::SUCCESS)
}

impl PullArgs {
    pub fn execute(self) -> Result<ExitCode> {
        pull(&self.reference, &self.output)
    }
}

/// `flowgate pull`: a module from a registry, verified, into a file (written whole or not at
/// all).
fn pull(reference: &str, output: &Path) -> Result<ExitCode> {
    let (bytes, pinned) = read_module(Path::new(reference))?;
    // A temporary file made exclusively under a random name beside the output (never through a
    // symlink left at a name it might take), with the usual permissions, then renamed.
    let dir = output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let writing = || format!("writing {}", output.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".flowgate-pull")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(writing)?;
    std::io::Write::write_all(&mut tmp, &bytes).with_context(writing)?;
    tmp.persist(output).with_context(writing)?;
    outln!("{pinned}")?;
    Ok(ExitCode::SUCCESS)
}

impl VerifyArgs {
    pub fn execute(self) -> Result<ExitCode> {
        verify(&self)
    }
}

/// `flowgate verify`: the manifest the reference names, hashed, and its signatures checked
/// against the keys; the module itself is neither pulled nor compiled, and no cache stands in
/// for the registry.
fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    use flowgate_host::oci::Registry;
    let reference = Reference::parse(&args.reference).map_err(anyhow::Error::msg)?;
    let trust = super::trust(&args.keys, &super::signing().remaps)?;
    let registry = Registry::new(REGISTRY.get().cloned().unwrap_or_default());
    let (_, digest) = registry.manifest(&reference)?;
    let pinned = reference.pinned(digest);
    let signer = trust.verify(&registry, &reference, digest)?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "reference": pinned.to_string(),
                "manifest": digest.to_string(),
                "key": signer.key(),
                "fingerprint": signer.fingerprint().to_string(),
                "identity": signer.identity(),
                "layer": signer.layer(),
            })
        )?;
    } else {
        outln!(
            "{pinned}: signed by {} ({}) as {}",
            signer.key(),
            signer.fingerprint(),
            signer.identity()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
