//! `qrelay`: the relay daemon and the admin's command line, one binary.
//!
//! - `qrelay` / `qrelay relay`: run the relay (embedded defaults without `--config`).
//! - `qrelay config example | check FILE | hash-password`
//! - `qrelay queue list | show ID | retry ID|all | delete ID`
//! - `qrelay mta-sts purge DOMAIN`
//! - `qrelay check DOMAIN [--json] [--class NAME]`: what delivery to a domain would get
//! - `qrelay status`: the running relay's version, uptime, queue and DNSSEC health
//! - `qrelay tls-rpt send [--day YYYY-MM-DD]`: send a day's TLS-RPT reports now
//! - `qrelay evidence verify | export`: check and export the evidence log (A5)

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
    /// Check a recipient domain: MX and DNSSEC, TLSA, MTA-STS, TLS-RPT, and a TLS
    /// handshake with every MX address (EHLO, STARTTLS, QUIT: no mail is sent), with
    /// the verdict per risk class. Runs without the daemon. Exit status 0 when the
    /// check ran (whatever the verdict), 2 when the domain could not be checked.
    Check {
        domain: String,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Judge only this risk class (its level and TLS profile).
        #[arg(long, value_name = "NAME")]
        class: Option<String>,
    },
    /// The running relay: version, uptime, queue counts, DNSSEC health.
    Status,
    /// TLS-RPT reports (RFC 8460) of the running relay.
    #[command(subcommand)]
    TlsRpt(TlsRptCmd),
    /// The tamper-evident evidence log in <spool.dir>/evidence (standards.md A5).
    /// Reads only; safe while the relay runs.
    #[command(subcommand)]
    Evidence(EvidenceCmd),
    /// The inbound STARTTLS certificate. Reads files only; works without the relay.
    #[command(subcommand)]
    Tls(TlsCmd),
    /// The appliance (as root on the box).
    #[command(subcommand)]
    System(SystemCmd),
}

#[derive(Subcommand)]
enum TlsCmd {
    /// The certificate the relay presents to the LAN mail server: file, names,
    /// validity and SHA-256 fingerprint (compare it with what the mail server shows).
    Show {
        /// Print only the SHA-256 fingerprint (AA:BB:...), for scripts and the console.
        #[arg(long)]
        fingerprint: bool,
    },
}

#[derive(Subcommand)]
enum SystemCmd {
    /// Wipe the data partition (queue, evidence, keys, configuration changes) on the
    /// next boot: sets the boot loader flag that adds `qrelay.factory_reset=1` to
    /// the kernel command line once. Reboot to carry it out.
    FactoryReset {
        /// Confirm: everything on the data partition is lost.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum EvidenceCmd {
    /// Check the whole log: every record, hash link and checkpoint signature, the
    /// device key and the signed head. Exit status 0 and a summary when intact,
    /// 1 and what is wrong (which record) otherwise.
    Verify {
        /// The device key fingerprint (hex SHA-256) noted earlier; the log must be
        /// signed by that key.
        #[arg(long, value_name = "HEX")]
        expect_key: Option<String>,
    },
    /// Write the delivery attempts of a time range, after verifying the log.
    Export {
        /// First day (YYYY-MM-DD, UTC) or time (RFC 3339).
        #[arg(long, value_name = "DATE")]
        from: String,
        /// Last day or time, inclusive.
        #[arg(long, value_name = "DATE")]
        to: String,
        /// csv or json.
        #[arg(long)]
        format: qrelay::evidence::ExportFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TlsRptCmd {
    /// Send the reports of one UTC day now (they are sent after midnight anyway);
    /// for the current day, what was counted so far.
    Send {
        /// The UTC day (YYYY-MM-DD); default: today.
        #[arg(long, value_name = "YYYY-MM-DD")]
        day: Option<String>,
    },
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
    /// Try a message's held recipients again now (after the recipient fixed their
    /// server, or an exception was added).
    Release { id: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<Unchecked>() => {
            eprintln!("qrelay: {e:#}");
            std::process::ExitCode::from(EXIT_UNCHECKED)
        }
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
            let cfg = Config::load(&file)?;
            for w in cfg.warnings(std::time::SystemTime::now()) {
                println!("{}: warning: {w}", file.display());
            }
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
        Command::Check {
            domain,
            json,
            class,
        } => {
            let config = load_config(cli.config.as_deref())?;
            check_command(config, &domain, json, class.as_deref())
        }
        Command::Evidence(cmd) => {
            let config = load_config(cli.config.as_deref())?;
            evidence_command(&config, cmd)
        }
        Command::TlsRpt(TlsRptCmd::Send { day }) => {
            let config = load_config(cli.config.as_deref())?;
            let day = day.unwrap_or_else(|| qrelay::tlsrpt::utc_day(now_secs()));
            if qrelay::tlsrpt::day_start(&day).is_none() {
                bail!("`{day}` is not a day in the form YYYY-MM-DD");
            }
            match control_call(&config.control_socket(), ControlCommand::TlsRptSend { day })? {
                Response::Done(msg) => println!("{msg}"),
                Response::Error(msg) => bail!("{msg}"),
                other => bail!("unexpected answer from the relay: {other:?}"),
            }
            Ok(())
        }
        Command::Tls(TlsCmd::Show { fingerprint }) => {
            let config = load_config(cli.config.as_deref())?;
            let Some(cert) = qrelay::tls::server::current_certificate(&config)? else {
                bail!(
                    "no certificate yet: the relay generates one in {} on its first start",
                    qrelay::tls::server::generated_dir(&config).display()
                );
            };
            if fingerprint {
                println!("{}", cert.sha256_colons());
            } else {
                let origin = if cert.generated {
                    "generated on first start"
                } else {
                    "configured"
                };
                println!("certificate: {} ({origin})", cert.path.display());
                println!("subject:     {}", cert.subject);
                println!("names:       {}", cert.names.join(", "));
                println!("valid:       {} to {}", cert.not_before, cert.not_after);
                println!("SHA-256:     {}", cert.sha256_colons());
            }
            Ok(())
        }
        Command::System(SystemCmd::FactoryReset { yes }) => {
            let config = load_config(cli.config.as_deref())?;
            if !yes {
                bail!("a factory reset wipes the queue, the evidence log, the keys and the configuration on the next boot; run again with --yes to confirm");
            }
            let env = &config.system.grubenv;
            let out = std::process::Command::new("grub-editenv")
                .arg(env)
                .args(["set", "QRELAY_FACTORY_RESET=1"])
                .output()
                .context("cannot run grub-editenv (is this the appliance?)")?;
            if !out.status.success() {
                bail!(
                    "grub-editenv {} failed: {}",
                    env.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            println!(
                "factory reset armed in {}: the data partition is wiped on the next boot; reboot to carry it out",
                env.display()
            );
            Ok(())
        }
        Command::Status => {
            let config = load_config(cli.config.as_deref())?;
            let socket = config.control_socket();
            match control_call(&socket, ControlCommand::Status)? {
                Response::Status(report) => {
                    print!("{}", control::format_status(&report));
                    Ok(())
                }
                Response::Error(msg) => bail!("{msg}"),
                other => bail!("unexpected answer from the relay: {other:?}"),
            }
        }
    }
}

fn evidence_command(config: &Config, cmd: EvidenceCmd) -> Result<()> {
    use qrelay::evidence;
    let dir = config.spool.dir.join("evidence");
    match cmd {
        EvidenceCmd::Verify { expect_key } => {
            let report = evidence::verify(&dir, expect_key.as_deref())
                .with_context(|| format!("evidence log {}: NOT intact", dir.display()))?;
            print!("{report}");
        }
        EvidenceCmd::Export {
            from,
            to,
            format,
            output,
        } => {
            let from = evidence::parse_bound(&from, false)?;
            let to = evidence::parse_bound(&to, true)?;
            let count = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    let result = evidence::export(&dir, from, to, format, &mut out)
                        .map_err(anyhow::Error::from)
                        .and_then(|n| {
                            let file = out.into_inner().map_err(|e| e.into_error())?;
                            file.sync_all()?;
                            Ok(n)
                        });
                    if result.is_err() {
                        // No half an export that looks like a whole one.
                        let _ = std::fs::remove_file(path);
                    }
                    result.with_context(|| format!("evidence log {}", dir.display()))?
                }
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    evidence::export(&dir, from, to, format, &mut out)
                        .with_context(|| format!("evidence log {}", dir.display()))?
                }
            };
            eprintln!("{count} delivery attempts exported");
        }
    }
    Ok(())
}

/// Exit status of `qrelay check` when the domain could not be checked at all.
const EXIT_UNCHECKED: u8 = 2;

fn check_command(config: Config, domain: &str, json: bool, class: Option<&str>) -> Result<()> {
    // Only errors: the report is the output (RUST_LOG overrides).
    qrelay::system::init_logging("error");
    let classes = qrelay::check::classes(&config, class)?;
    // The check fetches MTA-STS policies afresh into a private cache: it shows what
    // the domain publishes now and leaves the relay's cache alone.
    let cache = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut config = config;
    config.spool.dir = cache.path().to_path_buf();
    let config = std::sync::Arc::new(config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(async {
        let deliverer = qrelay::deliver::client::Deliverer::new(config.clone())
            .context("cannot set up DNS and TLS from the configuration")?;
        let roots = qrelay::mtasts::pkix_roots(config.tls.ca_file.as_deref())
            .context("cannot load the PKIX roots for MTA-STS")?;
        let mta_sts = qrelay::mtasts::MtaSts::new(&config, deliverer.resolver().clone(), roots)
            .context("cannot set up MTA-STS")?;
        let deliverer = deliverer.with_mta_sts(std::sync::Arc::new(mta_sts));
        anyhow::Ok(qrelay::check::check_domain(&deliverer, domain, &classes).await?)
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        print!("{}", qrelay::check::format_report(&report));
    }
    if report.unchecked {
        return Err(Unchecked(format!(
            "{domain} could not be checked: {}",
            report.error.as_deref().unwrap_or("unknown reason")
        ))
        .into());
    }
    Ok(())
}

/// `qrelay check` ran, but the domain could not be checked at all.
#[derive(Debug)]
struct Unchecked(String);

impl std::fmt::Display for Unchecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unchecked {}

/// Send one command to the running relay.
fn control_call(socket: &Path, command: ControlCommand) -> Result<Response> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(control::request(socket, command))?)
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
        QueueCmd::Release { id } => ControlCommand::Release(parse_id(id)?.to_string()),
    };
    let response = control_call(&config.control_socket(), command)?;
    let now = now_secs();
    match response {
        Response::Messages(envs) => print!("{}", control::format_list(&envs, now)),
        Response::Message(env) => print!("{}", control::format_show(&env, now)),
        Response::Done(msg) => println!("{msg}"),
        Response::Error(msg) => bail!("{msg}"),
        Response::Status(_) => bail!("unexpected answer from the relay"),
    }
    Ok(())
}
