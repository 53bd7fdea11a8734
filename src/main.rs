//! The gatehouse command line: a thin layer over the library. No logic lives here.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// mimalloc, see `gatehouse::alloc`.
#[global_allocator]
static GLOBAL: gatehouse::alloc::Allocator = gatehouse::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An edge reverse proxy built on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take the listening sockets over from the running gatehouse (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background (the pid file is written by the daemon).
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate the configuration, print a summary, and exit 1 listing every error.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Have the running gatehouse reload its configuration; exit 1 (printing the errors) if
    /// the new configuration is rejected.
    Reload {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Replace the running gatehouse with this binary without dropping a connection.
    Upgrade {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

/// `conf/gatehouse.yaml` when it exists here (running from the repository), else the
/// packaged `/etc/gatehouse/gatehouse.yaml`.
fn config_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let local = Path::new("conf/gatehouse.yaml");
        if local.exists() {
            local.to_path_buf()
        } else {
            PathBuf::from("/etc/gatehouse/gatehouse.yaml")
        }
    })
}

fn outcome(r: Result<String, String>) -> ExitCode {
    match r {
        Ok(msg) => {
            print!("{msg}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // RUST_LOG, when set, decides; otherwise the configuration's log_level does (at startup
    // and on every reload).
    // pingora_load_balancing logs each health flip with a dump of the peer options; gatehouse
    // logs the same event in one line (`pool api: backend ... is unhealthy`).
    let default_filter = "trace,pingora_load_balancing=error";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .init();
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Info);
    }
    match cli.command {
        Command::Version => {
            println!("gatehouse {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => {
            let path = config_path(config);
            outcome(
                gatehouse::config::load_runtime(&path, None)
                    .map(|rt| format!("{}{}: configuration OK\n", rt.summary(), path.display()))
                    .map_err(|e| format!("{e}\n{}: {} error(s)", path.display(), e.0.len())),
            )
        }
        Command::Reload { config } => outcome(gatehouse::ops::reload(&config_path(config))),
        Command::Upgrade { config } => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gatehouse"));
            outcome(gatehouse::ops::upgrade(&config_path(config), &exe))
        }
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            let path = config_path(config);
            let rt = match gatehouse::config::load_runtime(&path, None) {
                Ok(rt) => rt,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "{}: {} error(s); not starting",
                        path.display(),
                        errors.0.len()
                    );
                    return ExitCode::FAILURE;
                }
            };
            for w in &rt.warnings {
                log::warn!("{}: {w}", path.display());
            }
            if !daemon {
                if let Err(e) = gatehouse::ops::write_pid_file(&rt.server.pid_file) {
                    log::warn!(
                        "cannot write pid file {}: {e}",
                        rt.server.pid_file.display()
                    );
                }
            }
            let opts = gatehouse::RunOptions { upgrade, daemon };
            match gatehouse::build_server(rt, path, &opts) {
                Ok(server) => server.run_forever(),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
