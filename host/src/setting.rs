//! The settings an embedder chooses that an error can be the consequence of: a limit a
//! configuration, module or instance went past, or a permission the host was not given.
//! Errors carry the [`Setting`] (see each error type's `setting()`), so the program that
//! chose it can say how to change it in its own terms (a flag, a field, a file).

use std::time::Duration;

flowgate_policy::labels! {
    /// A setting an error names as its cause.
    pub enum Setting {
        /// The largest configuration accepted (`gateway::Options::max_config_bytes`).
        ConfigBytes => "config-bytes",
        /// The largest module pulled from a registry (`oci::RegistryOptions::max_module_bytes`).
        ModuleBytes => "module-bytes",
        /// The most linear memory an instance may have (`wasm::Limits::memory_bytes`).
        ModuleMemory => "module-memory",
        /// The CPU time `configure` may run (`wasm::Limits::configure_deadline`).
        ConfigureTime => "configure-time",
        /// The hosts spoken to over plain HTTP (`oci::RegistryOptions::insecure`).
        InsecureRegistry => "insecure-registry",
        /// The logins known for registries (`oci::RegistryOptions::credentials`).
        RegistryLogin => "registry-login",
        /// The tunnel endpoints of a VXLAN gateway's VPCs (`io::vxlan::Endpoints`).
        Endpoint => "endpoint",
        /// The identity remaps signatures are checked with (`oci::Trust::remap`).
        IdentityRemap => "identity-remap",
    }
}

/// A configuration refused for a limit of the host's rather than for what it says: it is
/// larger than accepted, or reading it ran the module out of memory or CPU time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    /// The configuration is larger than accepted; nothing was done with it.
    #[error("the configuration is {size} bytes, over the limit of {limit} bytes")]
    ConfigBytes {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// `configure` tried to grow the module's memory past its cap.
    #[error("the module ran out of its {} MiB of memory reading this configuration", .memory_bytes >> 20)]
    Memory {
        /// The cap in bytes.
        memory_bytes: usize,
    },
    /// `configure` ran past its CPU time.
    #[error("the module ran longer than its {deadline:?} of CPU time reading this configuration")]
    ConfigureTime {
        /// The CPU time it had.
        deadline: Duration,
    },
    /// `configure` took longer on the clock than its backstop: the machine gave it too
    /// little of a core to use its CPU time.
    #[error(
        "the module took longer than {backstop:?} on the clock reading this configuration, within its {deadline:?} of CPU time: the machine is too busy to give it a core"
    )]
    ConfigureClock {
        /// The CPU time it had.
        deadline: Duration,
        /// The time on the clock it had.
        backstop: Duration,
    },
}

impl OverLimit {
    /// The setting that would have let the configuration in.
    pub fn setting(&self) -> Setting {
        match self {
            OverLimit::ConfigBytes { .. } => Setting::ConfigBytes,
            OverLimit::Memory { .. } => Setting::ModuleMemory,
            OverLimit::ConfigureTime { .. } | OverLimit::ConfigureClock { .. } => {
                Setting::ConfigureTime
            }
        }
    }
}
