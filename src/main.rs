//! The gatehouse command line: a thin layer over the library. No logic lives here.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate the configuration, print a summary, and exit 1 listing every error.
    Check {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Command::Version => {
            println!("gatehouse {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => {
            let path = config_path(config);
            match gatehouse::config::load_runtime(&path, None) {
                Ok(rt) => {
                    print!("{}", rt.summary());
                    println!("{}: configuration OK", path.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("{}: {} error(s)", path.display(), errors.0.len());
                    ExitCode::FAILURE
                }
            }
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
            let opts = gatehouse::RunOptions { upgrade, daemon };
            gatehouse::build_server(rt, &opts).run_forever()
        }
    }
}
