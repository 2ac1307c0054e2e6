//! The command line: every command and flag, as clap reads them.

use std::fs;
use std::io::{self};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use flowgate_host::admin;
use flowgate_host::admin::Endpoint;
use flowgate_host::dataplane::{self};
use flowgate_host::gateway::{DEFAULT_MAX_CONFIG_BYTES, DEFAULT_WORKER_NICE};
use flowgate_host::wasm::Limits;

use super::logs::LogFormat;

#[derive(Parser)]
#[command(
    name = "flowgate",
    version,
    about = "A Wasm policy engine for VPC gateways: the peering flow filter and destination-VPC lookup."
)]
pub struct Cli {
    /// What to do; `run` on the bundled fixture when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How log lines are written on stderr: `human`, or `json` (one object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// A registry (HOST:PORT) spoken to over plain HTTP; loopback ones always are, every
    /// other one over HTTPS. Also the only plain-HTTP token services a login is sent to.
    /// Repeatable.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// The login for one registry, named as references name it: `HOST[:PORT]=FILE`, the file
    /// holding `user:password`. It is sent to that registry only (and to the token service it
    /// names), never to another; it replaces what Docker's config.json
    /// ($DOCKER_CONFIG/config.json or ~/.docker/config.json) has for that registry.
    /// Repeatable, once per registry.
    #[arg(long, global = true, value_name = "HOST[:PORT]=FILE")]
    pub registry_credentials: Vec<String>,
    /// The largest module pulled from a registry, in bytes.
    #[arg(long, global = true, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub max_module_bytes: u64,
    /// A public key trusted to sign modules: a PEM `PUBLIC KEY` file, ECDSA P-256 (as cosign,
    /// skopeo and `flowgate keygen` write them). Given once or more, every module must be
    /// signed by one of them before it is compiled: one from a registry by a cosign
    /// signature beside it naming its manifest digest and its repository, a file or upload by
    /// its detached signature (`MODULE.wasm.sig`); the bundled module is unsigned, so it is
    /// refused too. Repeatable.
    #[arg(long = "trusted-key", global = true, value_name = "PUB")]
    pub trusted_keys: Vec<PathBuf>,
    /// Accept a module under PREFIX signed for the same name under SIGNED_PREFIX, for a
    /// mirror (skopeo's `remapIdentity`): each HOST[:PORT] or HOST[:PORT]/REPO, for example
    /// mirror.example:5000=registry.example. Repeatable; the longest matching prefix applies.
    #[arg(
        long = "remap-identity",
        global = true,
        value_name = "PREFIX=SIGNED_PREFIX"
    )]
    pub remaps: Vec<String>,
    /// With --trusted-key: let modules from files and uploads without a detached signature
    /// (and the bundled module) run, with a warning at each. For development only: a gateway that enforces signatures
    /// must not have it.
    #[arg(long, global = true, requires = "trusted_keys")]
    pub allow_unsigned_local: bool,
}

/// A command; each one's arguments carry its `execute`.
#[derive(Subcommand)]
pub enum Command {
    /// Run a whole trace through the dataplane loop and print a summary. With no arguments,
    /// runs the bundled default fixture.
    Run(RunArgs),
    /// Judge packets given as JSON lines (stdin by default) and print one verdict per line.
    Check(CheckArgs),
    /// Run conformance cases (the fixtures/cases format) against a module: pass or fail per
    /// case, with expected against actual for every difference. Exits 1 when a case fails.
    Test(TestArgs),
    /// Run the same traffic through two modules and show how the verdicts change.
    Diff(DiffArgs),
    /// Explain a packet's verdict: which peerings admit it, through which expose entries, and
    /// for a drop the nearest misses. The module explains its own verdict.
    Explain(ExplainArgs),
    /// Replay a capture (pcap or pcapng): frames are parsed, judged a batch per policy call,
    /// and written out: allowed ones with the VXLAN VNI of their destination VPC, ambiguous
    /// and dropped ones to their own captures. Prints the `run` summary.
    Replay(ReplayArgs),
    /// Push a module to an OCI registry under a tag, in the CNCF Wasm artifact layout (the
    /// config filled from the component itself); prints the manifest's digest, which pins it.
    Push(PushArgs),
    /// Pull a module from an OCI registry, by tag or pinned digest, verified byte for byte,
    /// into a file.
    Pull(PullArgs),
    /// Make a signing key pair: PREFIX.key, the private key encrypted with a passphrase
    /// (cosign's format, readable by cosign and skopeo), and PREFIX.pub, its public key.
    Keygen(KeygenArgs),
    /// Sign a module in its registry with a private key (a cosign signature under the tag
    /// `sha256-<hex>.sig`, checked once written), or with --detached a module file (into
    /// FILE.sig).
    Sign(SignArgs),
    /// Check a module's cosign signatures in its registry against trusted public keys,
    /// without pulling or compiling the module; prints which key signed it, or exits 1 with
    /// why it is refused.
    Verify(VerifyArgs),
    /// Print what a module says about itself.
    Info(InfoArgs),
    /// Run a long-lived gateway: worker threads judge traffic while modules and configurations
    /// are swapped through the admin API (or SIGHUP, which re-reads the files given here).
    Serve(ServeArgs),
    /// Show the status of a running gateway.
    Status(StatusArgs),
    /// Swap a running gateway's module (and configuration), or only its configuration.
    Swap(SwapArgs),
    /// Roll a running gateway back to its previous good release.
    Rollback(RollbackArgs),
    /// A running gateway's tag watch: `resume` it after an operator's change paused it (it
    /// then acts when the tag moves), or `pause` it by hand.
    Watch(WatchArgs),
    /// A running gateway's shadow release: stage a module or configuration to judge copies
    /// of live traffic beside the live release, read its report, explain the packets it
    /// would judge otherwise, promote exactly what was measured, or discard it.
    Shadow(ShadowArgs),
    /// Measure, in under a minute, what the sandbox costs: a no-op call, and native against
    /// Wasm per packet at batch sizes 1, 32, 256 and 4096 on a generated table.
    Bench(BenchArgs),
    /// Generate a configuration and a trace (how `fixtures/default` was made).
    Gen(GenArgs),
}

/// `run` on the bundled fixture: what `flowgate` with no command does.
impl Default for Command {
    fn default() -> Self {
        Command::Run(RunArgs {
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
        })
    }
}

/// `flowgate run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The packets, as JSON lines (the `check` input format).
    #[arg(long, requires = "config")]
    pub packets: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `flowgate check`.
#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The packets, as JSON lines; stdin when absent.
    #[arg(long)]
    pub packets: Option<PathBuf>,
}

/// `flowgate test`.
#[derive(Args)]
pub struct TestArgs {
    /// The module (a Wasm component); with --native, leave it out.
    #[arg(required_unless_present = "native", value_name = "MODULE")]
    pub module: Option<PathBuf>,
    /// Case folders: a case (holding config.yaml), or a folder of cases. The bundled
    /// fixtures/cases when absent.
    #[arg(value_name = "CASES_DIR")]
    pub cases: Vec<PathBuf>,
    /// Run the cases through the policy library natively, with no module: every path
    /// given is a case folder.
    #[arg(long)]
    pub native: bool,
    /// Do not read or write the cache of precompiled modules.
    #[arg(long)]
    pub no_cache: bool,
}

/// `flowgate diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The module before (for example the one in production).
    pub old: PathBuf,
    /// The module after.
    pub new: PathBuf,
    /// The configuration both modules get.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Print the diff as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `flowgate explain`.
#[derive(Args)]
pub struct ExplainArgs {
    /// The configuration.
    #[arg(long)]
    pub config: PathBuf,
    /// The module; the bundled default when absent.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// The packet: `VPC SRC[:PORT] -> DST[:PORT] PROTO`, for example
    /// `vpc-1 10.0.0.5:1234 -> 1.0.0.9:80 tcp`; IPv6 with ports as `[fd00::1]:53`; the
    /// source VPC by name or as vni:N.
    pub packet: String,
    /// Print the explanation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `flowgate replay`.
#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The capture to replay: Ethernet frames, VXLAN (UDP 4789) or, with --src-vpc or
    /// --vni, plain.
    #[arg(long)]
    pub pcap: PathBuf,
    /// Where allowed frames go (pcap), VNI rewritten to the destination VPC's.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where dropped frames go (pcap), unchanged: by the policy or unreadable.
    #[arg(long)]
    pub drops: Option<PathBuf>,
    /// Where frames allowed with an ambiguous destination go (pcap), unchanged; without
    /// it they are counted but not written.
    #[arg(long)]
    pub ambiguous: Option<PathBuf>,
    /// The source VPC of frames that are not VXLAN.
    #[arg(long, conflicts_with = "vni")]
    pub src_vpc: Option<String>,
    /// The source VNI of frames that are not VXLAN.
    #[arg(long)]
    pub vni: Option<u32>,
    /// Skip the policy call: every readable frame goes to --out unchanged (measures what
    /// the rest of the path costs).
    #[arg(long)]
    pub skip_policy: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `flowgate push`.
#[derive(Args)]
pub struct PushArgs {
    /// The module (a Wasm component).
    pub module: PathBuf,
    /// Where: `oci://HOST[:PORT]/REPO:TAG`.
    pub reference: String,
    /// Sign the module pushed with this private key (as `flowgate sign` does, for the tag
    /// pushed). The key and its passphrase are read before anything is pushed.
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// `flowgate keygen`.
#[derive(Args)]
pub struct KeygenArgs {
    /// Where the pair goes: PREFIX.key and PREFIX.pub, neither of which may exist.
    pub prefix: PathBuf,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// `flowgate sign`.
#[derive(Args)]
pub struct SignArgs {
    /// `oci://HOST[:PORT]/REPO:TAG` (signed as HOST[:PORT]/REPO:TAG) or
    /// `oci://HOST[:PORT]/REPO@sha256:DIGEST` (signed as that); with --detached, a module
    /// file.
    pub target: String,
    /// The private key: an encrypted cosign key file (`flowgate keygen`, cosign's
    /// `generate-key-pair`).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// Sign a module file instead: its signature goes to FILE.sig beside it, a file that may
    /// not exist yet.
    #[arg(long)]
    pub detached: bool,
    /// With --detached: replace an existing FILE.sig.
    #[arg(long, requires = "detached")]
    pub force: bool,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// Where a private key's passphrase comes from; never from the command line.
#[derive(Args)]
pub struct PassphraseArgs {
    /// Read the key's passphrase from the first line of FILE (without its line end).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the key's passphrase from the environment variable VAR (when --passphrase-file is
    /// not given).
    #[arg(
        long,
        value_name = "VAR",
        default_value = "FLOWGATE_PASSPHRASE",
        conflicts_with = "passphrase_file"
    )]
    pub passphrase_env: String,
}

/// `flowgate pull`.
#[derive(Args)]
pub struct PullArgs {
    /// `oci://HOST[:PORT]/REPO:TAG` or `oci://HOST[:PORT]/REPO@sha256:DIGEST`.
    pub reference: String,
    /// The file to write.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

/// `flowgate verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// `oci://HOST[:PORT]/REPO:TAG` or `oci://HOST[:PORT]/REPO@sha256:DIGEST`.
    pub reference: String,
    /// A trusted public key: a PEM `PUBLIC KEY` file, ECDSA P-256 (as cosign and skopeo
    /// write them). Repeatable; a signature by any one of them is enough.
    #[arg(long = "key", value_name = "PUB", required = true)]
    pub keys: Vec<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `flowgate info`.
#[derive(Args)]
pub struct InfoArgs {
    /// The module (a Wasm component); the bundled default when absent.
    #[arg(long)]
    pub module: Option<PathBuf>,
}

/// `flowgate status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate swap`.
#[derive(Args)]
pub struct SwapArgs {
    /// The new module (a Wasm component); absent: swap only the configuration.
    pub module: Option<PathBuf>,
    /// The new configuration.
    #[arg(long, required_unless_present = "module")]
    pub config: Option<PathBuf>,
    /// Swap only if the release serving is this one (its ETag, from `flowgate status`).
    /// Without it, the ETag of the release serving when the command starts is sent, so a
    /// change made by someone else meanwhile is not overwritten.
    #[arg(long)]
    pub if_match: Option<String>,
    /// Swap nothing: fetch the module and configuration in force, run traffic through
    /// them and through the new ones, and show how the verdicts would change.
    #[arg(long)]
    pub dry_run: bool,
    /// Stage the change as a shadow release first, for this many seconds of live traffic;
    /// print its report, then promote it when it changed no more packets than the budget
    /// (--max-changed, --max-changed-share; none changed when neither is given), else
    /// discard it and exit 1.
    #[arg(long, value_parser = seconds, conflicts_with = "dry_run")]
    pub shadow: Option<f64>,
    /// With --shadow: the most packets the shadow may judge otherwise.
    #[arg(long, requires = "shadow", conflicts_with = "max_changed_share")]
    pub max_changed: Option<u64>,
    /// With --shadow: the largest share (0 to 1) of the packets compared the shadow may
    /// judge otherwise.
    #[arg(long, requires = "shadow", value_parser = share)]
    pub max_changed_share: Option<f64>,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate rollback`.
#[derive(Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate watch`.
#[derive(Args)]
pub struct WatchArgs {
    /// `resume` or `pause`.
    pub action: WatchAction,
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate shadow`.
#[derive(Args)]
pub struct ShadowArgs {
    #[command(subcommand)]
    pub action: ShadowAction,
}

/// What `flowgate shadow` does.
#[derive(Subcommand)]
pub enum ShadowAction {
    /// Stage a module (a file or an `oci://` reference), a configuration or both as the
    /// shadow release (`PUT /shadow/module`, `PUT /shadow/config`).
    Stage(ShadowStageArgs),
    /// The staged shadow's report, as a table (`GET /shadow`).
    Status(ShadowStatusArgs),
    /// The first packets the shadow judges otherwise, with both verdicts; with --explain,
    /// each explained under the live release and under the shadow.
    Samples(ShadowSamplesArgs),
    /// Promote the staged shadow (`POST /shadow/promote`), naming it by its ETag.
    Promote(ShadowPromoteArgs),
    /// Discard the staged shadow (`DELETE /shadow`).
    Discard(ShadowDiscardArgs),
}

/// `flowgate shadow stage`.
#[derive(Args)]
pub struct ShadowStageArgs {
    /// The shadow's module (a Wasm component, or an `oci://` reference the gateway pulls);
    /// absent: the live module, with --config.
    pub module: Option<PathBuf>,
    /// The shadow's configuration; absent: the live one.
    #[arg(long, required_unless_present = "module")]
    pub config: Option<PathBuf>,
    /// Stage only while this release serves (its ETag, from `flowgate status`).
    #[arg(long)]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate shadow status`.
#[derive(Args)]
pub struct ShadowStatusArgs {
    /// Print the gateway's answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate shadow samples`.
#[derive(Args)]
pub struct ShadowSamplesArgs {
    /// Explain each sample under the live release (fetched from the gateway) and under the
    /// shadow.
    #[arg(long)]
    pub explain: bool,
    /// With --explain, when the shadow's module is not the live one: the shadow's module file
    /// (checked against the shadow's sha256).
    #[arg(long, requires = "explain")]
    pub module: Option<PathBuf>,
    /// With --explain, when the shadow's configuration is not the live one: its file
    /// (checked against the shadow's sha256).
    #[arg(long, requires = "explain")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate shadow promote`.
#[derive(Args)]
pub struct ShadowPromoteArgs {
    /// The shadow's ETag (from `flowgate shadow status`); absent: the one staged when the
    /// command starts.
    #[arg(long)]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate shadow discard`.
#[derive(Args)]
pub struct ShadowDiscardArgs {
    /// Discard only this shadow (its ETag, from `flowgate shadow status`), not one staged
    /// since; absent: whichever is staged.
    #[arg(long)]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub admin: ClientArgs,
}

/// `flowgate bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Peerings of the generated table.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub peerings: u32,
    /// The module to measure; the bundled default when absent.
    #[arg(long)]
    pub module: Option<PathBuf>,
}

/// `flowgate gen`.
#[derive(Args)]
pub struct GenArgs {
    /// Number of peerings.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub peerings: u32,
    /// Number of packets.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(0..=100_000_000))]
    pub packets: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// `mixed`: every feature of the config language (IPv6, NAT, defaults, shared service
    /// prefixes), about 20 peers per VPC. `gateway`: a gateway's shape for benchmarks, 100
    /// VPCs each owning sixteen /24s up to 1,000 peerings (250 up to 5,000), each side
    /// exposing one to three of them, a quarter of the entries with port ranges; 90 % of the
    /// packets between exposed prefixes, spread over all VPCs.
    #[arg(long, value_enum, default_value_t = Shape::Mixed)]
    pub shape: Shape,
    /// With `--shape gateway`: no port ranges.
    #[arg(long)]
    pub no_ports: bool,
    /// With `--shape gateway`: `ipv4`, the VPCs' IPv4 /24s only; `dual`, 120 VPCs up to 1,000
    /// peerings (300 up to 5,000) each also owning sixteen IPv6 /64s, each side exposing one
    /// IPv4 and one IPv6 block (a fifth of the entries with port ranges, some blocks with
    /// holes, wide or with a shared service prefix), packets 45 % IPv4, 45 % IPv6, 5 % of
    /// mixed families, 5 % random.
    #[arg(long, value_enum, default_value_t = Family::Ipv4)]
    pub family: Family,
    /// Directory to write `config.yaml` and `packets.jsonl` into.
    #[arg(long)]
    pub out: PathBuf,
}

/// The shape of a generated workload.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Mixed,
    Gateway,
}

/// The address families of `--shape gateway`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    Ipv4,
    Dual,
}

/// `flowgate serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The configuration; the bundled demo one when absent.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The policy module; the bundled default when absent.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Where packets come from: `replay` loops over --packets (or the bundled trace), `gen`
    /// generates traffic from the configuration's own prefixes, `vxlan` receives VXLAN on
    /// --listen and forwards allowed packets to their VPC's --endpoint.
    #[arg(long, value_enum, default_value_t = SourceKind::Replay)]
    pub source: SourceKind,
    /// With `--source vxlan`: the UDP address to receive VXLAN on.
    #[arg(long, default_value = "127.0.0.1:4789")]
    pub listen: String,
    /// With `--source vxlan`: a VPC's tunnel endpoint, as NAME=HOST:PORT (repeatable).
    #[arg(long = "endpoint", value_name = "NAME=HOST:PORT")]
    pub endpoints: Vec<String>,
    /// With `--source vxlan`: a file of tunnel endpoints, one `NAME HOST:PORT` per line.
    #[arg(long)]
    pub endpoints_file: Option<PathBuf>,
    /// The trace to replay.
    #[arg(long)]
    pub packets: Option<PathBuf>,
    /// Packets per second over all workers; 0 for as fast as they go.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Worker threads; one per core when absent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// How many nice levels the worker threads run below the gateway's other threads, so that
    /// swaps, rollbacks and the admin API get their share of busy cores; 0 leaves them be.
    #[arg(long, default_value_t = DEFAULT_WORKER_NICE, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub worker_nice: u8,
    /// Packets per policy call.
    #[arg(long, default_value_t = dataplane::DEFAULT_BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// The share of its batches (0 to 1) each worker also judges with a staged shadow
    /// release (`PUT /shadow/module`, `PUT /shadow/config`), after their live verdicts are
    /// applied.
    #[arg(long, default_value_t = flowgate_host::gateway::DEFAULT_SHADOW_SHARE, value_parser = share)]
    pub shadow_share: f64,
    /// Where the admin API listens: `unix:PATH` (the default is
    /// $XDG_RUNTIME_DIR/flowgate/admin.sock, else /run/flowgate/admin.sock; the socket is made
    /// 0600), or `HOST:PORT`, which needs --admin-token-file.
    #[arg(long, value_parser = endpoint)]
    pub admin: Option<Endpoint>,
    /// A file holding the bearer token every admin request must carry (required on TCP): at
    /// least 16 bytes, in a file only its owner can read (mode 0600 or 0400). Or named
    /// tokens, a `NAME TOKEN` line each: any one lets a request in, and the audit record
    /// of a change names the token it carried.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Append an audit record of every admin request that changes or tries to change the
    /// gateway (who, what, the releases before and after, the result), and of the changes the
    /// gateway makes or tries on its own account (the tag watch's swaps, shadows and
    /// promotions, SIGHUP's reloads, auto-reverts; not the watch's discards of its shadows), to
    /// FILE, one JSON line each, written through to the disk before the change is made; a
    /// change whose record cannot be written is refused. The file is created 0600, never
    /// through a symbolic link.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// What to do with a batch the module fails on.
    #[arg(long, value_enum, default_value_t = FaultMode::FailClosed)]
    pub on_fault: FaultMode,
    /// Revert to the previous good release after this many faults ...
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub fault_limit: u32,
    /// ... within this many seconds.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub fault_window: f64,
    /// With --module oci://HOST/REPO:TAG: poll the tag every this many seconds and swap
    /// when it moves to a digest not yet acted on (a failed pull is retried with a capped
    /// backoff; a refused module is quarantined). An operator's change pauses the watch
    /// until `flowgate watch resume`.
    #[arg(long, value_parser = seconds)]
    pub pull_interval: Option<f64>,
    /// With --pull-interval: stage each new digest as a shadow release first, for this many
    /// seconds of live traffic; log its report, then promote it when it changed no more
    /// packets than the budget (--max-changed, --max-changed-share; none changed when neither
    /// is given), else discard it and quarantine the digest. A shadow that judged no packet
    /// is staged again after the backoff.
    #[arg(long, value_parser = seconds, requires = "pull_interval")]
    pub pull_shadow: Option<f64>,
    /// With --pull-shadow: the most packets the shadow may judge otherwise.
    #[arg(long, requires = "pull_shadow", conflicts_with = "max_changed_share")]
    pub max_changed: Option<u64>,
    /// With --pull-shadow: the largest share (0 to 1) of the packets compared the shadow may
    /// judge otherwise.
    #[arg(long, requires = "pull_shadow", value_parser = share)]
    pub max_changed_share: Option<f64>,
    /// Stop after this many seconds (run until SIGINT or SIGTERM when absent).
    #[arg(long, value_parser = seconds)]
    pub duration: Option<f64>,
    /// Do not read or write the cache of precompiled modules.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What `flowgate watch` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchAction {
    /// Follow the tag again (`POST /watch/resume`).
    Resume,
    /// Stop following the tag until resumed (`POST /watch/pause`).
    Pause,
}

/// How to reach a running gateway's admin API.
#[derive(Args)]
pub struct ClientArgs {
    /// The gateway's admin API: `unix:PATH` (the default is
    /// $XDG_RUNTIME_DIR/flowgate/admin.sock, else /run/flowgate/admin.sock) or `HOST:PORT`.
    #[arg(long, value_parser = endpoint)]
    pub admin: Option<Endpoint>,
    /// A file holding the gateway's bearer token (only its owner may read it); else the
    /// FLOWGATE_ADMIN_TOKEN variable.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    pub fn client(&self) -> Result<admin::Client> {
        let token = match &self.token_file {
            Some(path) => Some(admin::read_token_file(path)?),
            None => match std::env::var(admin::TOKEN_ENV)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
            {
                Some(token) => {
                    admin::check_token(&token).with_context(|| admin::TOKEN_ENV.to_owned())?;
                    Some(token)
                }
                None => None,
            },
        };
        let endpoint = self.admin.clone().unwrap_or_else(Endpoint::default_socket);
        Ok(admin::Client::new(endpoint, token))
    }
}

/// Limits on what a configuration may cost.
#[derive(Args, Clone, Copy)]
pub struct LimitArgs {
    /// The largest configuration accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_CONFIG_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub max_config_bytes: u64,
    /// The most memory a module instance may use, in MiB.
    #[arg(long, default_value_t = (Limits::default().memory_bytes >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub module_memory_mib: u32,
    /// The most CPU time a module may run reading a configuration, in seconds (time it waits
    /// for a core does not count).
    #[arg(long, default_value_t = Limits::default().configure_deadline.as_secs_f64(), value_parser = seconds)]
    pub configure_timeout: f64,
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
    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: (self.module_memory_mib as usize) << 20,
            configure_deadline: std::time::Duration::from_secs_f64(self.configure_timeout),
            ..Limits::default()
        }
    }

    /// Reads a configuration file, refusing one over --max-config-bytes before reading it
    /// all (`/dev/zero` is refused, not read until memory runs out).
    pub fn read_config(&self, path: &Path) -> Result<String> {
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
/// A share from 0 to 1.
pub fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("`{text}` is not a share from 0 to 1")),
    }
}

pub fn seconds(text: &str) -> Result<f64, String> {
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

pub fn endpoint(text: &str) -> Result<Endpoint, String> {
    Endpoint::parse(text).map_err(|e| e.to_string())
}

/// The traffic of a diff.
#[derive(Args)]
pub struct TrafficArgs {
    /// The packets, as JSON lines (the `check` input format).
    #[arg(long, conflicts_with = "generate")]
    pub packets: Option<PathBuf>,
    /// Generate this many packets from the configuration's own prefixes (the default, with
    /// 10,000, when --packets is absent).
    #[arg(long = "gen", id = "generate")]
    pub generate: Option<usize>,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Sample packets shown per change.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SourceKind {
    Replay,
    Gen,
    Vxlan,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FaultMode {
    FailClosed,
    Previous,
}

#[derive(Args)]
pub struct PolicyArgs {
    /// The configuration (YAML or JSON).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The policy module (a Wasm component); the bundled default when absent.
    #[arg(long, conflicts_with = "native")]
    pub module: Option<PathBuf>,
    /// Run the policy library natively instead of a Wasm module (a baseline).
    #[arg(long)]
    pub native: bool,
    /// Packets per policy call.
    #[arg(long, default_value_t = dataplane::DEFAULT_BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// Do not read or write the cache of precompiled modules.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}
