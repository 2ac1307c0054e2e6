//! `flowgate`: run a configuration and a stream of packets through a policy module.

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    keep_large_buffers_mapped();
    let cli = Cli::parse();
    cli::logs::init(cli.log_format);
    let options = cli::registry_options(&cli).and_then(|registry| {
        let signing = cli::signing_options(&cli)?;
        Ok((registry, signing))
    });
    match options.and_then(|(registry, signing)| {
        let _ = cli::REGISTRY.set(registry);
        let _ = cli::SIGNING.set(signing);
        run(cli)
    }) {
        Ok(code) => code,
        // Whoever read the output stopped reading (`flowgate bench | head`): nothing to say.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowgate: {}", cli::hint::with_hint(&e));
            ExitCode::FAILURE
        }
    }
}

/// Has glibc map every allocation of 128 KiB or more of its own and unmap it when freed. By
/// default glibc raises that threshold to the size of each large block freed (up to 32 MiB),
/// after which a swap's multi-MiB buffers (the state handed over, the configuration) come from
/// its heaps and stay resident once the release that held them is let go: after three swaps at
/// 5,000 peerings, 40-60 MiB more with 2 or 16 workers, and a third of that with the threshold
/// fixed (`host/tests/all/memory.rs`).
fn keep_large_buffers_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets a tunable of the allocator; called before any thread starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Whether `e` comes from writing a command's output to a closed pipe (and not, say, from a
/// socket of the gateway's).
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<cli::StdoutClosed>())
    })
}

/// Runs the command given, `run` on the bundled fixture when none is.
fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command.unwrap_or_default() {
        Command::Run(command) => command.execute(),
        Command::Check(command) => command.execute(),
        Command::Test(command) => command.execute(),
        Command::Diff(command) => command.execute(),
        Command::Explain(command) => command.execute(),
        Command::Replay(command) => command.execute(),
        Command::Push(command) => command.execute(),
        Command::Pull(command) => command.execute(),
        Command::Keygen(command) => command.execute(),
        Command::Sign(command) => command.execute(),
        Command::Verify(command) => command.execute(),
        Command::Info(command) => command.execute(),
        Command::Serve(command) => command.execute(),
        Command::Status(command) => command.execute(),
        Command::Swap(command) => command.execute(),
        Command::Rollback(command) => command.execute(),
        Command::Watch(command) => command.execute(),
        Command::Shadow(command) => command.execute(),
        Command::Bench(command) => command.execute(),
        Command::Gen(command) => command.execute(),
    }
}
