//! `soundwave`: parse the command line, load the configuration, run what was asked.

use anyhow::Context;
use clap::Parser;
use soundwave::cli::{Cli, ClusterCommand, Command};

/// mimalloc instead of glibc's malloc: allocation and free were about a quarter of the
/// user-space instructions of a cached request (callgrind), and glibc's arenas contend across
/// the balancer's threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Written out by its own thread; the guard flushes what is queued when main returns.
    let _log = soundwave::logging::init().context("starting the log writer")?;
    match cli.command {
        Command::Node(args) => {
            let config = args.resolve().context("loading the configuration")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime
                .block_on(soundwave::node::run(config))
                .context("running the node")?;
        }
        Command::Cluster(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            match command {
                ClusterCommand::Status { from, json } => runtime.block_on(
                    soundwave::cluster_client::status(&from.from, &from.cluster_secret, json),
                ),
                ClusterCommand::Remove { id, from } => runtime.block_on(
                    soundwave::cluster_client::remove(id, &from.from, &from.cluster_secret),
                ),
            }
            .context("asking the cluster")?;
        }
        Command::Up(args) => {
            soundwave::up::run(&args.config, args.tls).context("running the topology")?;
        }
        Command::Lb(args) => {
            let config = args.resolve().context("loading the configuration")?;
            // Pingora builds its own runtimes: no tokio runtime around it.
            lb::run(
                config,
                soundwave::telemetry::prometheus(),
                soundwave::logging::write_lb_access_line,
                args.upgrade,
                // SIGHUP loads the file again, with the same environment and flags.
                Some(Box::new(move || args.resolve().map_err(|e| e.to_string()))),
            )
            .context("running the load balancer")?;
        }
        Command::Backup(args) => {
            let secret = args.cluster_secret.unwrap_or_default();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let backup = runtime
                .block_on(soundwave::backup::backup(&args.from, &args.out, &secret))
                .context("backing up")?;
            println!(
                "{}",
                soundwave::backup::Outcome {
                    done: "backup written to",
                    path: &args.out,
                    backup,
                }
            );
        }
        Command::Restore(args) => {
            let backup =
                soundwave::backup::restore(&args.file, &args.data_dir).context("restoring")?;
            println!(
                "{}",
                soundwave::backup::Outcome {
                    done: "restored into",
                    path: &args.data_dir,
                    backup,
                }
            );
            println!(
                "start it with: soundwave node --data-dir {} (a new cluster; alone, one member)",
                args.data_dir.display()
            );
        }
    }
    Ok(())
}
