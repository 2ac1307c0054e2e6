//! The `flowgate` commands, one file per family; what they share lives here.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flowgate_host::hex;
use flowgate_host::oci::{Reference, Registry, RegistryOptions, check_registry};
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
    match path {
        Some(path) => read_module(path),
        None => Ok((
            flowgate_host::DEFAULT_MODULE.to_vec(),
            "the bundled module".into(),
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

/// A module from a file, or pulled from a registry when `path` is an `oci://` reference
/// (verified byte for byte); named by its file, or by its reference pinned to the digest.
pub fn read_module(path: &Path) -> Result<(Vec<u8>, String)> {
    let text = path.to_string_lossy();
    if !Reference::is_reference(&text) {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok((bytes, path.display().to_string()));
    }
    let reference = Reference::parse(&text).map_err(anyhow::Error::msg)?;
    let registry = Registry::new(REGISTRY.get().cloned().unwrap_or_default());
    let (pulled, _) = registry.pull_or_cached(&reference, oci_cache().as_ref())?;
    tracing::info!(
        event = "pull",
        reference = %reference,
        manifest = %pulled.manifest,
        layout = pulled.layout,
        "pulled {reference}"
    );
    Ok((pulled.module, reference.pinned(pulled.manifest).to_string()))
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
