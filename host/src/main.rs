//! `flowgate`: run a configuration and a stream of packets through a policy module.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use flowgate_host::dataplane::{self};

use cli::args::*;
use cli::author::*;
use cli::bench::*;
use cli::gateway::*;
use cli::run::*;
use cli::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::logs::init(cli.log_format);
    let registry = cli::registry_options(&cli);
    match registry.and_then(|options| {
        let _ = cli::REGISTRY.set(options);
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
        Command::Push { module, reference } => cmd_push(&module, &reference),
        Command::Pull { reference, output } => cmd_pull(&reference, &output),
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
            let (old_bytes, old_name) = read_module(&old)?;
            let (new_bytes, new_name) = read_module(&new)?;
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
        Command::Gen(args) => cmd_gen(&args),
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
        } => cmd_swap(
            module.as_deref(),
            config.as_deref(),
            if_match,
            dry_run,
            &traffic,
            &admin,
        ),
        Command::Rollback { admin } => client_answer(admin.client()?.rollback()?),
        Command::Watch { action, admin } => {
            let client = admin.client()?;
            client_answer(match action {
                WatchAction::Resume => client.watch("resume")?,
                WatchAction::Pause => client.watch("pause")?,
            })
        }
    }
}
