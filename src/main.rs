//! The `rolegate` command: parses the command line and hands each command to its module under
//! `cli/`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::{bench, block_on, exit_on_error, finish};
use rolegate::config::ServeConfig;

// mimalloc returns freed memory to the system, so the resident size after loading a large
// policy reflects the state kept rather than the parser's garbage, and it is fast on the
// allocation-heavy gRPC paths.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// rolegate: API-key authorization sidecar.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: serve a policy file (reloaded when it changes) or the embedded store
    /// (--data-dir, writable through the Admin API) over gRPC and HTTP.
    Serve(Box<ServeConfig>),
    /// Ask a running sidecar for a decision. Exits 0 when allowed, 1 when denied, 2 on error.
    Check(cli::check::CheckArgs),
    /// Check a policy file; print every problem with its location. Exits 1 when it is invalid.
    Validate(cli::validate::ValidateArgs),
    /// API keys: make and hash them offline; create, list, change, revoke and delete them on a
    /// server.
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// Drive Check over gRPC and report requests/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Roles and entitlements on a server: list roles, create, change and delete custom roles,
    /// add custom entitlements.
    #[command(subcommand)]
    Roles(cli::roles::RolesCommand),
    /// Teams on a server: create, list, show, change and delete them.
    #[command(subcommand)]
    Teams(cli::teams::TeamsCommand),
    /// Users on a server: create, list, show, change and delete them.
    #[command(subcommand)]
    Users(cli::users::UsersCommand),
    /// Projects on a server: create, list, show, change and delete them.
    #[command(subcommand)]
    Projects(cli::projects::ProjectsCommand),
    /// The route table of the proxy front ends (Envoy ext_authz, the HTTP auth endpoint).
    #[command(subcommand)]
    Routes(cli::routes::RoutesCommand),
    /// Make the server's state equal to a policy file, as one revision (`--dry-run`: show the
    /// diff only).
    Apply(cli::apply::ApplyArgs),
    /// Measure durable single-key writes from concurrent clients, and Checks issued right after
    /// each write with its revision as min_revision. The key must be allowed to create teams,
    /// users and keys (a SYSTEM_OWNER key).
    BenchWrites(bench::writes::BenchWritesArgs),
    /// Follow a sidecar's change feed: print one event per line. Exits 3 after a reset.
    Watch(cli::watch::WatchArgs),
    /// Run a policy's test files offline. Exits 0 when every case passes, 1 when any fails.
    Test(cli::policy_test::TestArgs),
    /// Print the entitlements each requestor gains and loses between two policy files.
    Diff(cli::diff::DiffArgs),
    /// List every requestor and key that holds an entitlement, with the scope.
    WhoCan(cli::who_can::WhoCanArgs),
    /// Who made each committed revision: the caller's key prefix, the RPC or Apply, the time
    /// (needs audit.read; shows what the scope held covers).
    History(cli::history::HistoryArgs),
    /// Measure the etcd origin against etcd itself (propagation, writes, Apply, Check, start),
    /// on an etcd of one's own: each figure a ratio, round after round (docs/etcd.md, Speed).
    BenchEtcd(Box<bench::etcd::BenchEtcdArgs>),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(config) => cli::serve::run(*config),
        Command::Check(args) => exit_on_error(block_on(cli::check::run(args))),
        Command::Validate(args) => cli::validate::run(&args),
        Command::Keys(cmd) => finish(cli::keys::run(cmd)),
        Command::Bench(args) => exit_on_error(block_on(bench::run(args))),
        Command::Roles(cmd) => finish(block_on(cli::roles::run(cmd))),
        Command::Teams(cmd) => finish(block_on(cli::teams::run(cmd))),
        Command::Users(cmd) => finish(block_on(cli::users::run(cmd))),
        Command::Projects(cmd) => finish(block_on(cli::projects::run(cmd))),
        Command::Routes(cmd) => finish(block_on(cli::routes::run(cmd))),
        Command::Apply(args) => finish(block_on(cli::apply::run(args))),
        Command::BenchWrites(args) => finish(block_on(bench::writes::run(args))),
        Command::Watch(args) => exit_on_error(block_on(cli::watch::run(args))),
        Command::Test(args) => exit_on_error(cli::policy_test::run(&args)),
        Command::Diff(args) => exit_on_error(cli::diff::run(&args)),
        Command::WhoCan(args) => exit_on_error(block_on(cli::who_can::run(args))),
        Command::History(args) => finish(block_on(cli::history::run(args))),
        Command::BenchEtcd(args) => finish(block_on(bench::etcd::run(*args))),
    }
}
