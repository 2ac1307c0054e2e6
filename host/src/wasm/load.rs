//! Loading a policy module: the checks that refuse what is not a flowgate module, the cache of
//! precompiled artifacts, and the linker that grants the module nothing but a hash seed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker, types::ComponentItem};

use super::bindings::GuestPre;
use super::instance::{HostState, instantiate};
use super::{FILTER_INTERFACE, Runtime, WIT_VERSION};
use crate::hex;
use crate::store::{PrivateDir, SEAL_BYTES};

/// Why a file was refused as a policy module.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the `\\0asm` magic)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build the policy for wasm32-wasip2 (or componentize it)"
    )]
    CoreModule,
    /// A precompiled artifact: only flowgate's own cache is trusted to hold those.
    #[error(
        "a precompiled wasmtime artifact: give flowgate the component itself, it keeps its own cache"
    )]
    Precompiled,
    /// A binary wasmtime could not compile.
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// A component that does not export the filter interface.
    #[error(
        "does not export `{FILTER_INTERFACE}`: is it a flowgate policy module? It exports: {0}"
    )]
    WrongWorld(String),
    /// The filter interface, at a version this host cannot call.
    #[error(
        "exports `{found}`, but this host speaks `{FILTER_INTERFACE}@{WIT_VERSION}` and compatible versions"
    )]
    IncompatibleVersion {
        /// The export found.
        found: String,
    },
    /// The interface has the right name but not the right functions or types.
    #[error(
        "exports `{FILTER_INTERFACE}` with other functions or types than this host expects: {0}"
    )]
    WrongShape(String),
    /// Instantiating the module, asking it about itself or configuring it failed other than
    /// by a refusal of the configuration.
    #[error("the module failed when started: {}{reason}", step.prefix())]
    Start {
        /// Where.
        step: StartStep,
        /// What went wrong, as wasmtime or the host says it.
        reason: String,
    },
}

flowgate_policy::labels! {
    /// Where starting a module instance failed ([`ModuleError::Start`]).
    pub enum StartStep {
        /// Instantiating the component: its start functions, its memory, room in the pool.
        Instantiate => "instantiate",
        /// Asking it about itself (`info`).
        Info => "info",
        /// Handing it its configuration (`configure`): it trapped, or the host failed.
        Configure => "configure",
        /// Preparing a release's instances on threads of their own (one panicked).
        Prepare => "prepare",
        /// Taking the state a configured instance built (`export-state`).
        Export => "export-state",
        /// Handing an instance the state another built (`adopt-state`): it refused the state,
        /// or trapped.
        Adopt => "adopt-state",
    }
}

impl StartStep {
    /// What a [`ModuleError::Start`] says before its reason: `configure: ` for a configure
    /// call (the other steps read from the reason itself).
    fn prefix(self) -> &'static str {
        match self {
            StartStep::Configure => "configure: ",
            StartStep::Export => "export-state: ",
            StartStep::Adopt => "adopt-state: ",
            StartStep::Instantiate | StartStep::Info | StartStep::Prepare => "",
        }
    }
}

impl ModuleError {
    /// A [`ModuleError::Start`] at `step`.
    pub(crate) fn start(step: StartStep, reason: impl std::fmt::Display) -> Self {
        ModuleError::Start {
            step,
            reason: reason.to_string(),
        }
    }
}

impl Runtime {
    /// Checks and compiles (or loads from the cache) a policy component.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedModule, ModuleError> {
        check_header(bytes)?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let component = self.compile_cached(bytes, &digest)?;
        check_exports(&self.engine, &component)?;
        let mut linker = Linker::new(&self.engine);
        grant_insecure_seed(&self.engine, &component, &mut linker)?;
        // Whatever else the module imports (Rust's std pulls in WASI) traps when called: the
        // guest gets no filesystem, network or clock.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(GuestPre::new)
            .map_err(|e| ModuleError::WrongShape(format!("{e:#}")))?;
        Ok(LoadedModule {
            pre,
            digest,
            bytes: bytes.into(),
        })
    }

    /// The component compiled, from the cache when an entry for it is there and intact.
    ///
    /// The cache folder is a [`PrivateDir`]: one another user could change is refused (with a
    /// warning) and the module compiled without it. An entry is `artifact ++ seal`, the seal
    /// taken under the folder's own key over the component's sha256, the engine's
    /// compatibility hash and the artifact: an artifact made without the key, copied over
    /// another module's entry, altered, or cut short fails it, is ignored with a warning and
    /// compiled again. Nothing else is ever deserialized: an artifact is native code.
    fn compile_cached(&self, bytes: &[u8], digest: &[u8; 32]) -> Result<Component, ModuleError> {
        let compile = || {
            Component::new(&self.engine, bytes).map_err(|e| ModuleError::Invalid(format!("{e:#}")))
        };
        let Some(dir) = &self.cache_dir else {
            return compile();
        };
        let store = match PrivateDir::open(dir) {
            Ok(store) => store,
            Err(e) => {
                tracing::warn!(
                    event = "cache-refused",
                    error = %e,
                    "the artifact cache is not used: the module is compiled and nothing is cached"
                );
                return compile();
            }
        };
        let mut hasher = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let engine_hash = hasher.finish();
        let name = format!("{}-{engine_hash:016x}.cwasm", hex(digest));
        let engine_hash = engine_hash.to_le_bytes();
        let path = store.path().join(&name);
        match store.read(&name, MAX_ARTIFACT_BYTES) {
            Ok(None) => {}
            Ok(Some(entry)) if entry.len() > SEAL_BYTES => {
                let (artifact, seal) = entry.split_at(entry.len() - SEAL_BYTES);
                if store.verify(&sealed(digest, &engine_hash, artifact), seal) {
                    // SAFETY: the artifact is one this cache wrote for exactly this component
                    // with this engine: its seal, under the private folder's own key and bound
                    // to the component's digest and the engine's compatibility hash, matches.
                    #[allow(unsafe_code)]
                    match unsafe { Component::deserialize(&self.engine, artifact) } {
                        Ok(component) => return Ok(component),
                        Err(e) => tracing::warn!(
                            event = "cache-unusable",
                            path = %path.display(),
                            error = %format!("{e:#}"),
                            "cache entry is sealed but not loadable: the module is compiled again"
                        ),
                    }
                } else {
                    tracing::warn!(
                        event = "cache-unsealed",
                        path = %path.display(),
                        "cache entry does not carry this cache's seal (altered, copied in, or made without its key): ignored, the module is compiled again"
                    );
                }
            }
            Ok(Some(_)) => tracing::warn!(
                event = "cache-unsealed",
                path = %path.display(),
                "cache entry is too short to be sealed: ignored, the module is compiled again"
            ),
            Err(e) => tracing::warn!(
                event = "cache-unreadable",
                error = %e,
                "cache entry is not read: the module is compiled again"
            ),
        }
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        let mut entry = artifact.clone();
        entry.extend_from_slice(&store.seal(&sealed(digest, &engine_hash, &artifact)));
        // A cache that cannot be written is no reason to refuse the module.
        if let Err(e) = store.write(&name, &entry) {
            tracing::warn!(event = "cache-unwritten", error = %e, "the compiled module is not cached");
        }
        // SAFETY: `artifact` was produced just now by this engine.
        #[allow(unsafe_code)]
        unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))
    }
}

/// What an artifact's seal covers: what it is, the component it was compiled from, the
/// engine that compiled it, and the artifact (each with its length, so none can be shifted
/// into another).
fn sealed<'a>(digest: &'a [u8; 32], engine_hash: &'a [u8; 8], artifact: &'a [u8]) -> [&'a [u8]; 4] {
    [b"artifact", digest, engine_hash, artifact]
}

/// The largest artifact read back from the cache (compiled code is a few times the size of
/// its component; components are limited far below this).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Rust's `HashMap` (and so most YAML parsers) asks `wasi:random/insecure-seed` for a seed
/// when the module starts. The host answers with a constant: hashing stays deterministic and
/// the guest learns nothing about the host. Any 0.2 version of the interface is answered.
fn grant_insecure_seed(
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<HostState>,
) -> Result<(), ModuleError> {
    const SEED: (u64, u64) = (0x666c_6f77_6761_7465, 0x7365_6564_2d30_3031);
    let wanted: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("wasi:random/insecure-seed@0.2"))
        .collect();
    for name in wanted {
        let mut instance = linker
            .instance(&name)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        instance
            .func_wrap("insecure-seed", |_, (): ()| Ok((SEED,)))
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
    }
    Ok(())
}

fn check_header(bytes: &[u8]) -> Result<(), ModuleError> {
    if Engine::detect_precompiled(bytes).is_some() {
        return Err(ModuleError::Precompiled);
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ModuleError::NotWasm);
    }
    // Bytes 4..6 are the version, 6..8 the layer: 1 for a component, 0 for a core module.
    match bytes[6..8] {
        [1, 0] => Ok(()),
        _ => Err(ModuleError::CoreModule),
    }
}

/// Whether a module built against WIT version `found` can be called by this host: same
/// major version, or for 0.x the same minor version.
pub fn compatible(found: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(found), parse(WIT_VERSION)) {
        (Some((0, minor)), Some((0, ours))) => minor == ours,
        (Some((major, _)), Some((ours, _))) => major == ours,
        _ => false,
    }
}

fn check_exports(engine: &Engine, component: &Component) -> Result<(), ModuleError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let filter = ty.exports(engine).find_map(|(name, item)| {
        let version = name.strip_prefix(FILTER_INTERFACE)?.strip_prefix('@')?;
        matches!(item.ty, ComponentItem::ComponentInstance(_))
            .then(|| (name.to_owned(), version.to_owned()))
    });
    match filter {
        None if names.is_empty() => Err(ModuleError::WrongWorld("nothing".into())),
        None => Err(ModuleError::WrongWorld(names.join(", "))),
        Some((found, version)) if !compatible(&version) => {
            Err(ModuleError::IncompatibleVersion { found })
        }
        Some(_) => Ok(()),
    }
}

/// A checked, compiled module, ready to instantiate cheaply.
#[derive(Clone)]
pub struct LoadedModule {
    pub(super) pre: GuestPre<HostState>,
    digest: [u8; 32],
    /// The component as uploaded: what `GET /module` hands back.
    bytes: Arc<[u8]>,
}

impl LoadedModule {
    /// Instantiates the module in a fresh store and drops it: what starting an instance costs,
    /// without `configure` (for benchmarks).
    pub fn instantiate_only(&self, runtime: &Runtime) -> Result<(), ModuleError> {
        instantiate(runtime.engine(), self, runtime.limits).map(|_| ())
    }

    /// sha256 of the component's bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The component's bytes, as loaded.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The names of what the component exports and imports (for an OCI artifact's config).
    pub fn interfaces(&self, runtime: &Runtime) -> (Vec<String>, Vec<String>) {
        let ty = self.pre.instance_pre().component().component_type();
        let names = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>();
        (
            names(&mut ty.exports(&runtime.engine).map(|(n, _)| n.to_owned())),
            names(&mut ty.imports(&runtime.engine).map(|(n, _)| n.to_owned())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_versions_compatible_with_this_host() {
        assert!(compatible("0.6.0") && compatible("0.6.7") && compatible("0.6.0-rc1"));
        assert!(
            !compatible("0.5.0")
                && !compatible("0.7.0")
                && !compatible("1.0.0")
                && !compatible("")
                && !compatible("x.y")
        );
    }
}
