//! The command line's words for the library's settings: an error caused by a [`Setting`] is
//! printed with the flag that changes it.

use flowgate_host::dataplane::RestartFailed;
use flowgate_host::gateway::SwapError;
use flowgate_host::io::pcap::ReplayError;
use flowgate_host::io::vxlan::EndpointError;
use flowgate_host::oci::{OciError, SignatureError};
use flowgate_host::wasm::{RuntimeError, StartError};
use flowgate_host::{OverLimit, PolicyFault, Setting};

/// The flag that sets `setting`.
pub fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::ConfigBytes => "--max-config-bytes",
        Setting::ModuleBytes => "--max-module-bytes",
        Setting::ModuleMemory => "--module-memory-mib",
        Setting::ConfigureTime => "--configure-timeout",
        Setting::InsecureRegistry => "--insecure-registry",
        Setting::RegistryLogin => "--registry-credentials",
        Setting::Endpoint => "--endpoint",
        Setting::IdentityRemap => "--remap-identity",
    }
}

/// What to do about an error caused by `setting`, in the command line's terms.
fn advice(setting: Setting, error: &(dyn std::error::Error + 'static)) -> String {
    let flag = flag(setting);
    match setting {
        Setting::ConfigBytes | Setting::ModuleBytes => format!("raise it with {flag}"),
        Setting::ModuleMemory if error.is::<RuntimeError>() => {
            format!("run fewer workers or lower {flag}")
        }
        Setting::ModuleMemory => format!("raise the cap with {flag}"),
        Setting::ConfigureTime => format!("raise the limit with {flag}"),
        Setting::InsecureRegistry => match error.downcast_ref::<OciError>() {
            Some(OciError::PlainTokenService { host, port, .. }) => {
                format!("name that host with {flag} {host}:{port} if it is meant")
            }
            _ => format!("a host named with {flag} may be spoken to over plain HTTP"),
        },
        Setting::RegistryLogin => match error.downcast_ref::<OciError>() {
            Some(OciError::NoLogin { registry, .. }) => {
                format!("Docker's config.json, or {flag} {registry}=FILE")
            }
            _ => format!("Docker's config.json, or {flag} HOST=FILE"),
        },
        Setting::Endpoint => format!("given with {flag}"),
        Setting::IdentityRemap => {
            format!("a mirror of the repository signed is named with {flag} PREFIX=SIGNED_PREFIX")
        }
    }
}

/// The setting an error of the library's names as its cause, if any.
fn setting(error: &(dyn std::error::Error + 'static)) -> Option<Setting> {
    if let Some(e) = error.downcast_ref::<OverLimit>() {
        Some(e.setting())
    } else if let Some(e) = error.downcast_ref::<StartError>() {
        e.setting()
    } else if let Some(e) = error.downcast_ref::<SwapError>() {
        e.setting()
    } else if let Some(e) = error.downcast_ref::<OciError>() {
        e.setting()
    } else if let Some(e) = error.downcast_ref::<SignatureError>() {
        e.setting()
    } else if let Some(e) = error.downcast_ref::<RuntimeError>() {
        e.setting()
    } else if let Some(e) = error.downcast_ref::<EndpointError>() {
        e.setting()
    } else if let Some(e) = error.downcast_ref::<RestartFailed>() {
        fault_setting(&e.restart)
    } else if let Some(ReplayError::Restart(e)) = error.downcast_ref::<ReplayError>() {
        fault_setting(&e.restart)
    } else if let Some(e) = error.downcast_ref::<PolicyFault>() {
        fault_setting(e)
    } else {
        None
    }
}

/// The setting behind a fresh instance that could not start.
fn fault_setting(fault: &PolicyFault) -> Option<Setting> {
    match fault {
        PolicyFault::Start(start) => start.downcast_ref::<StartError>()?.setting(),
        _ => None,
    }
}

/// `e` as printed, `{e:#}`, followed by the flag that changes the setting behind it when a
/// library error in its chain names one: "... (raise it with --max-config-bytes)".
pub fn with_hint(e: &anyhow::Error) -> String {
    let hint = e
        .chain()
        .find_map(|cause| setting(cause).map(|s| advice(s, cause)));
    match hint {
        Some(hint) => format!("{e:#} ({hint})"),
        None => format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_flag_the_command_line_accepts() {
        use clap::CommandFactory;
        let cli = crate::cli::args::Cli::command();
        let mut longs: Vec<String> = Vec::new();
        let mut commands = vec![&cli];
        while let Some(c) = commands.pop() {
            longs.extend(
                c.get_arguments()
                    .filter_map(|a| a.get_long())
                    .map(|l| format!("--{l}")),
            );
            commands.extend(c.get_subcommands());
        }
        for setting in Setting::ALL {
            assert!(
                longs.iter().any(|l| l == flag(setting)),
                "{setting}: {} is no flag of the command line",
                flag(setting)
            );
        }
    }

    #[test]
    fn a_library_error_behind_context_gets_its_flag() {
        let e =
            anyhow::Error::new(OverLimit::ConfigBytes { size: 9, limit: 1 }).context("config.yaml");
        assert_eq!(
            with_hint(&e),
            "config.yaml: the configuration is 9 bytes, over the limit of 1 bytes (raise it with --max-config-bytes)"
        );
        let plain = anyhow::anyhow!("nothing to do with a setting");
        assert_eq!(with_hint(&plain), "nothing to do with a setting");
    }
}
