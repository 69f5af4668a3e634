//! `qrelay`: the relay daemon and the admin's command line, one binary.
//!
//! - `qrelay` / `qrelay relay`: run the relay (embedded defaults without `--config`).
//! - `qrelay config example | check FILE | hash-password`
//! - `qrelay queue list | show ID | retry ID|all | delete ID`
//! - `qrelay mta-sts purge DOMAIN`

mod daemon;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use qrelay::config::{Config, EXAMPLE};
use qrelay::control::{self, Command as ControlCommand, Response};
use qrelay::spool::record::{now_secs, QueueId};

#[derive(Parser)]
#[command(
    name = "qrelay",
    version,
    about = "Mail gateway with verified transport encryption"
)]
struct Cli {
    /// Configuration file (TOML). Without it, the embedded defaults are used.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay daemon (the default).
    Relay,
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Inspect and manage the running relay's queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Manage the MTA-STS policy cache.
    #[command(subcommand)]
    MtaSts(MtaStsCmd),
}

#[derive(Subcommand)]
enum MtaStsCmd {
    /// Forget a recipient domain's cached policy; the relay fetches it anew. Works on
    /// <spool.dir>/mta-sts directly, safe while the relay runs (see mtasts::purge_cached).
    Purge { domain: String },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the commented example configuration with every key and its default.
    Example,
    /// Validate a configuration file; names the bad key.
    Check { file: PathBuf },
    /// Read a password from standard input and print its argon2 hash for [[smtp.users]].
    HashPassword,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Every message, with per-recipient state, attempts, next retry and last reply.
    List,
    /// Everything about one message, including the TLS facts of its last attempt.
    Show { id: String },
    /// Try a message (or `all`) again now.
    Retry { id: String },
    /// Remove a message from the queue without notice.
    Delete { id: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command.unwrap_or(Command::Relay) {
        Command::Relay => {
            let config = load_config(cli.config.as_deref())?;
            qrelay::system::init_logging(&config.log.level);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(daemon::run(config))
        }
        Command::Config(ConfigCmd::Example) => {
            print!("{EXAMPLE}");
            Ok(())
        }
        Command::Config(ConfigCmd::Check { file }) => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Config(ConfigCmd::HashPassword) => {
            let mut pw = String::new();
            std::io::stdin()
                .read_to_string(&mut pw)
                .context("cannot read the password from standard input")?;
            let pw = pw.trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                bail!("empty password");
            }
            println!("{}", qrelay::smtp::hash_password(pw));
            Ok(())
        }
        Command::MtaSts(MtaStsCmd::Purge { domain }) => {
            let config = load_config(cli.config.as_deref())?;
            if qrelay::mtasts::purge_cached(&config.spool.dir, &domain)? {
                println!("{domain}: cached MTA-STS policy removed");
            } else {
                println!("{domain}: no cached MTA-STS policy");
            }
            Ok(())
        }
        Command::Queue(cmd) => {
            let config = load_config(cli.config.as_deref())?;
            queue_command(&config, cmd)
        }
    }
}

fn parse_id(id: &str) -> Result<QueueId> {
    QueueId::parse(id).with_context(|| format!("`{id}` is not a queue id (16 hex digits)"))
}

fn queue_command(config: &Config, cmd: QueueCmd) -> Result<()> {
    let command = match &cmd {
        QueueCmd::List => ControlCommand::List,
        QueueCmd::Show { id } => ControlCommand::Show(parse_id(id)?.to_string()),
        QueueCmd::Retry { id } if id == "all" => ControlCommand::Retry("all".into()),
        QueueCmd::Retry { id } => ControlCommand::Retry(parse_id(id)?.to_string()),
        QueueCmd::Delete { id } => ControlCommand::Delete(parse_id(id)?.to_string()),
    };
    let socket = config.control_socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let response = rt.block_on(control::request(&socket, command))?;
    let now = now_secs();
    match response {
        Response::Messages(envs) => print!("{}", control::format_list(&envs, now)),
        Response::Message(env) => print!("{}", control::format_show(&env, now)),
        Response::Done(msg) => println!("{msg}"),
        Response::Error(msg) => bail!("{msg}"),
    }
    Ok(())
}
