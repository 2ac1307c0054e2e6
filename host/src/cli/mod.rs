//! The `flowgate` commands, one file per family; what they share lives here.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use flowgate_host::hex;
use flowgate_host::oci::{
    IdentityRemap, PullError, Reference, Registry, RegistryOptions, SignatureCheck, Signer, Trust,
    TrustedKey, check_registry, detached_path, read_detached,
};
use flowgate_host::wasm::{Limits, LoadedModule, Runtime, WasmPolicy};
use flowgate_host::{NativePolicy, Policy, StartError};

use args::*;

/// `println!` for a command's output that returns an error instead of panicking when standard
/// output is gone (`flowgate bench | head` closes the pipe early). That error carries
/// [`StdoutClosed`], on which `main` ends quietly; any other error still fails the command.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err($crate::cli::stdout_error)
    }};
}

/// `print!` likewise; see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*).map_err($crate::cli::stdout_error)
    }};
}

/// Standard output's reader went away: the command's output is no longer wanted.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// A failed write to standard output, marked with [`StdoutClosed`] when the pipe is broken.
pub fn stdout_error(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

pub mod args;
pub mod author;
pub mod bench;
pub mod gateway;
pub mod hint;
pub mod logs;
pub mod run;
pub mod sign;

/// A policy ready to judge, and how to describe it.
pub struct Loaded {
    pub policy: Box<dyn Policy>,
    pub describe: String,
    /// The engine and its epoch ticker, which must outlive the policy's deadlines.
    pub _runtime: Option<Runtime>,
}

pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn load_policy(args: &PolicyArgs, config: &str, config_name: &str) -> Result<Loaded> {
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
    let contender = Contender {
        module: &bytes,
        module_name: &module_name,
        config,
        config_name,
    };
    let module = contender.load(&runtime)?;
    let policy = contender.start(&runtime, &module)?;
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

/// The module at `path` (the bundled one when absent), and how to name it.
pub fn module_bytes(path: Option<&Path>) -> Result<(Vec<u8>, String)> {
    signed_module_bytes(path).map(|(bytes, name, _)| (bytes, name))
}

/// [`module_bytes`], with who signed the module. The bundled module carries no signature: with
/// `--trusted-key` it is refused unless `--allow-unsigned-local` lets unsigned modules in.
pub fn signed_module_bytes(path: Option<&Path>) -> Result<(Vec<u8>, String, Option<Signer>)> {
    match path {
        Some(path) => read_signed_module(path),
        None if signing().trust.is_some() && !signing().allow_unsigned_local => bail!(
            "--trusted-key: the bundled module is not signed; give --module FILE (with FILE.sig) or oci://..., or --allow-unsigned-local for development"
        ),
        None => Ok((
            flowgate_host::DEFAULT_MODULE.to_vec(),
            "the bundled module".into(),
            None,
        )),
    }
}

/// Registry options from the global flags, with logins from Docker's `config.json` and
/// `--registry-credentials`, each for the registry it names.
pub fn registry_options(cli: &Cli) -> Result<RegistryOptions> {
    let mut credentials = std::collections::BTreeMap::new();
    let docker = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"));
    if let Some(path) = docker.filter(|p| p.is_file()) {
        match docker_logins(&path) {
            Ok(logins) => credentials.extend(logins),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Docker's config.json is not read")
            }
        }
    }
    for given in &cli.registry_credentials {
        let (registry, path) = given.split_once('=').with_context(|| {
            format!(
                "--registry-credentials {given}: name the registry the login is for, as HOST[:PORT]=FILE (a login is sent to its own registry only)"
            )
        })?;
        check_registry(registry)
            .map_err(|e| anyhow::anyhow!("--registry-credentials {given}: {e}"))?;
        let path = Path::new(path);
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let (user, password) = text
            .trim()
            .split_once(':')
            .with_context(|| format!("{}: expected one line `user:password`", path.display()))?;
        credentials.insert(
            registry.to_ascii_lowercase(),
            (user.to_owned(), password.to_owned()),
        );
    }
    Ok(RegistryOptions {
        insecure: cli.insecure_registries.clone(),
        max_module_bytes: cli.max_module_bytes,
        credentials,
        ..RegistryOptions::default()
    })
}

/// The logins of Docker's `config.json` (`auths`: registry to base64 `user:password`), keyed
/// by the registry's `HOST[:PORT]` (a scheme and a path, as in `https://host/v1/`, dropped).
fn docker_logins(path: &Path) -> Result<Vec<(String, (String, String))>> {
    use base64::Engine as _;
    let meta = std::fs::metadata(path)?;
    if meta.len() > 1 << 20 {
        bail!("over 1 MiB");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let mut logins = Vec::new();
    if let Some(auths) = config["auths"].as_object() {
        for (registry, entry) in auths {
            let Some(auth) = entry["auth"].as_str() else {
                continue;
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .with_context(|| format!("auths.{registry}.auth is not base64"))?;
            let pair = String::from_utf8(decoded)
                .with_context(|| format!("auths.{registry}.auth is not text"))?;
            let (user, password) = pair
                .split_once(':')
                .with_context(|| format!("auths.{registry}.auth is not user:password"))?;
            let host = registry
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let host = host.split('/').next().unwrap_or_default();
            if check_registry(host).is_err() {
                tracing::warn!(path = %path.display(), registry = %registry, "a login in Docker's config.json for no registry host: not used");
                continue;
            }
            logins.push((
                host.to_ascii_lowercase(),
                (user.to_owned(), password.to_owned()),
            ));
        }
    }
    Ok(logins)
}

/// How registries are spoken to, from the global flags (set once, in `main`).
pub static REGISTRY: std::sync::OnceLock<RegistryOptions> = std::sync::OnceLock::new();

/// The signatures modules must carry, from the global flags.
#[derive(Debug, Default)]
pub struct Signing {
    /// The `--trusted-key`s with the remaps; `None` without keys.
    pub trust: Option<Arc<Trust>>,
    /// The `--remap-identity`s.
    pub remaps: Vec<IdentityRemap>,
    /// `--allow-unsigned-local`.
    pub allow_unsigned_local: bool,
}

/// The signatures modules must carry (set once, in `main`).
pub static SIGNING: std::sync::OnceLock<Signing> = std::sync::OnceLock::new();

/// [`SIGNING`], or none required when unset.
pub fn signing() -> &'static Signing {
    static NONE: std::sync::OnceLock<Signing> = std::sync::OnceLock::new();
    SIGNING
        .get()
        .unwrap_or_else(|| NONE.get_or_init(Signing::default))
}

/// The signing options of the global flags: the keys read, the remaps parsed.
pub fn signing_options(cli: &Cli) -> Result<Signing> {
    let mut remaps = Vec::with_capacity(cli.remaps.len());
    for text in &cli.remaps {
        remaps
            .push(IdentityRemap::parse(text).with_context(|| format!("--remap-identity {text}"))?);
    }
    let trust = match cli.trusted_keys.as_slice() {
        [] => None,
        keys => Some(Arc::new(trust(keys, &remaps)?)),
    };
    if cli.allow_unsigned_local {
        tracing::warn!(
            event = "unsigned-local",
            "--allow-unsigned-local: modules from files and uploads run without a signature; for development only"
        );
    }
    Ok(Signing {
        trust,
        remaps,
        allow_unsigned_local: cli.allow_unsigned_local,
    })
}

/// Signatures by the keys in the files `keys`, with `remaps`.
pub fn trust(keys: &[PathBuf], remaps: &[IdentityRemap]) -> Result<Trust> {
    let mut read = Vec::with_capacity(keys.len());
    for path in keys {
        read.push(TrustedKey::read(path)?);
    }
    Ok(remaps
        .iter()
        .cloned()
        .fold(Trust::new(read), |trust, remap| trust.remap(remap)))
}

/// A module from a file, or pulled from a registry when `path` is an `oci://` reference
/// (verified byte for byte); named by its file, or by its reference pinned to the digest.
/// With `--trusted-key`, it must be signed ([`read_signed_module`]).
pub fn read_module(path: &Path) -> Result<(Vec<u8>, String)> {
    read_signed_module(path).map(|(bytes, name, _)| (bytes, name))
}

/// [`read_module`], with who signed the module. With `--trusted-key`, a module from a
/// registry is pulled by the digest its signatures were checked for, and a file must come
/// with its detached signature (`FILE.sig`), unless `--allow-unsigned-local` lets an unsigned
/// one in; a refusal is a [`SignatureError`](flowgate_host::oci::SignatureError).
pub fn read_signed_module(path: &Path) -> Result<(Vec<u8>, String, Option<Signer>)> {
    let signing = signing();
    let text = path.to_string_lossy();
    if !Reference::is_reference(&text) {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.display().to_string();
        let Some(trust) = &signing.trust else {
            return Ok((bytes, name, None));
        };
        let sig_path = detached_path(path);
        let sig = read_detached(path).map_err(|e| {
            Trust::unreadable_detached(&name, &bytes, &sig_path.display().to_string(), &e)
        })?;
        return match trust.verify_detached(
            &name,
            &bytes,
            &sig_path.display().to_string(),
            sig.as_deref(),
        ) {
            Ok(signer) => Ok((bytes, name, Some(signer))),
            Err(e) if signing.allow_unsigned_local && e.check() == SignatureCheck::Unsigned => {
                tracing::warn!(
                    event = "unsigned-local",
                    module = %name,
                    "{name} has no detached signature: run unsigned by --allow-unsigned-local (development only)"
                );
                Ok((bytes, name, None))
            }
            Err(e) => Err(e.into()),
        };
    }
    let reference = Reference::parse(&text).map_err(anyhow::Error::msg)?;
    let registry = Registry::new(REGISTRY.get().cloned().unwrap_or_default());
    let (pulled, signer) = match &signing.trust {
        Some(trust) => {
            let (pulled, signer, _) = trust
                .pull(&registry, &reference, oci_cache().as_ref())
                .map_err(|e| match e {
                    PullError::Signature(e) => anyhow::Error::new(e),
                    PullError::Registry(e) => anyhow::Error::new(e),
                })?;
            (pulled, Some(signer))
        }
        None => (
            registry.pull_or_cached(&reference, oci_cache().as_ref())?.0,
            None,
        ),
    };
    tracing::info!(
        event = "pull",
        reference = %reference,
        manifest = %pulled.manifest,
        layout = pulled.layout,
        "pulled {reference}"
    );
    Ok((
        pulled.module,
        reference.pinned(pulled.manifest).to_string(),
        signer,
    ))
}

/// Where pulled modules are kept by digest: `oci/` in the artifact cache's folder.
pub fn oci_cache() -> Option<flowgate_host::oci::Cache> {
    Runtime::default_cache_dir().map(|d| flowgate_host::oci::Cache::new(d.join("oci")))
}

/// The artifact cache's folder, unless `no_cache`.
pub fn cache_dir(no_cache: bool) -> Option<PathBuf> {
    if no_cache {
        None
    } else {
        Runtime::default_cache_dir()
    }
}

/// The engine, with the artifact cache unless `no_cache`.
pub fn runtime(no_cache: bool) -> Result<Runtime> {
    Ok(Runtime::new(Limits::default(), cache_dir(no_cache))?)
}

/// A module and the configuration it gets, each named as the user gave it: what `explain`
/// starts, and each of the two a diff compares.
pub struct Contender<'a> {
    pub module: &'a [u8],
    pub module_name: &'a str,
    pub config: &'a str,
    pub config_name: &'a str,
}

impl Contender<'_> {
    /// The module compiled; a refused one is named.
    pub fn load(&self, runtime: &Runtime) -> Result<LoadedModule> {
        runtime
            .load(self.module)
            .with_context(|| format!("{} refused", self.module_name))
    }

    /// A configured instance of `module`; a refused configuration names the file and the
    /// module.
    pub fn start(&self, runtime: &Runtime, module: &LoadedModule) -> Result<WasmPolicy> {
        match WasmPolicy::new(runtime, module, self.config) {
            Ok(policy) => Ok(policy),
            Err(StartError::Config(e)) => bail!(
                "{}: configuration refused by {}: {}",
                self.config_name,
                self.module_name,
                e
            ),
            Err(StartError::OverLimit(e)) => Err(anyhow::Error::new(e).context(format!(
                "{}: configuration refused by {}",
                self.config_name, self.module_name
            ))),
            Err(e) => Err(e).with_context(|| format!("{} refused", self.module_name)),
        }
    }
}
