//! The long-lived peers the system tests talk to: a test CA, Knot DNS serving the
//! test zones, several Postfix instances as receiving MX and one Postfix as the
//! LAN's sending mail server.
//!
//! Everything lives under one state directory (default `/tmp/qrelay-test-infra`,
//! override with `QRELAY_TEST_INFRA`). [`Infra::get`] starts what is missing and
//! reuses what runs; it holds a file lock while doing so, so parallel test threads
//! and test processes share one set of peers. `tests/infra-down` (run by
//! `scripts/test` at the end) stops them.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::mailbox::Mailbox;

/// Where Knot listens; every relay under test uses it as its only resolver.
pub const DNS_ADDR: &str = "127.0.10.54:53";
/// An address where nothing listens (the "down" preferred MX).
pub const DOWN_ADDR: &str = "127.0.20.9";
/// The Postfix that plays the LAN's own mail server.
pub const LAN_MTA_ADDR: &str = "127.0.30.1:25";
/// The relay the LAN Postfix hands all mail to (its relayhost). Only one test at a
/// time may run a relay there: [`Infra::lan_relay_lock`].
pub const LAN_RELAY_ADDR: &str = "127.0.30.25:2525";

/// The MTA-STS policy web server (nginx, HTTPS on port 443): every
/// `mta-sts.<domain>` of the MTA-STS scenarios points here.
pub const STS_HTTPS_IP: &str = "127.0.20.50";

/// The MTA-STS scenarios: (policy domain, mode, the one `mx:` pattern, whether the
/// policy host `mta-sts.<domain>` presents a valid certificate for its name). Each
/// domain has `_mta-sts.<domain> TXT "v=STSv1; id=..."` and `mta-sts.<domain> A`
/// [`STS_HTTPS_IP`], where nginx serves the policy.
pub const STS_POLICY_HOSTS: &[(&str, &str, &str, bool)] = &[
    // enforce, MX covered, MX name only in unsigned DNS: verified by MTA-STS.
    (
        "sts-ok.insecure.example.test",
        "enforce",
        "mx-sts.insecure.example.test",
        true,
    ),
    // enforce, the MX is not covered by the policy.
    (
        "sts-nomx.insecure.example.test",
        "enforce",
        "mx.elsewhere.example.test",
        true,
    ),
    // the policy host's certificate is for another name: fetch error, no policy.
    (
        "sts-wrongname.insecure.example.test",
        "enforce",
        "mx-sts.insecure.example.test",
        false,
    ),
    // DANE-EE MX with an enforce policy that does not cover it: DANE wins (E7).
    (
        "sts-dane.example.test",
        "enforce",
        "mx.elsewhere.example.test",
        true,
    ),
    // testing, MX with a self-signed certificate.
    (
        "sts-testing.example.test",
        "testing",
        "mx-self.example.test",
        true,
    ),
];

/// The REQUIRETLS test peer (a small SMTP server of the tests, `tests/src/peer.rs`,
/// which advertises REQUIRETLS after STARTTLS): `mx-requiretls.example.test`, MX of
/// `requiretls.example.test` (DNSSEC-signed, test-CA certificate `mx-requiretls`).
pub const REQUIRETLS_PEER_IP: &str = "127.0.20.20";

/// The TLS-RPT HTTPS report endpoint of the tests (`tlsrpt.example.test`, test-CA
/// certificate `tlsrpt`), served by the test itself.
pub const TLSRPT_HTTPS_IP: &str = "127.0.20.51";

/// Domains that publish a TLS-RPT policy (`_smtp._tls` TXT): (domain, rua).
/// `rpt-mail.example.test` (MX mx-ca) reports by mail to a mailbox on mx-ca;
/// `rpt-https.example.test` (MX mx-ca) reports to the HTTPS endpoint.
pub const TLSRPT_DOMAINS: &[(&str, &str)] = &[
    ("rpt-mail", "mailto:tlsrpt@ca.example.test"),
    ("rpt-https", "https://tlsrpt.example.test/report"),
];

/// Benchmark sink (`smtp-sink`, plaintext), MX of `bench.example.test`.
pub const BENCH_SINK_IP: &str = "127.0.40.1";
/// Benchmark TLS sink (a Postfix smtpd with STARTTLS proxying to the plaintext
/// sink), MX of `bench-tls.example.test`.
pub const BENCH_TLS_SINK_IP: &str = "127.0.40.2";
/// Nothing listens here: MX of `bench-down.example.test` (delivery impossible).
pub const BENCH_DOWN_IP: &str = "127.0.40.9";

/// Bump when anything generated below changes: a running infrastructure with
/// another generation is torn down and rebuilt.
const GENERATION: &str =
    "qrelay-test-infra v5 (DANE, MTA-STS and TLS scenario MXes, nginx policy host, REQUIRETLS peer and TLS-RPT records, rpt-fail)";

/// Domains every receiving MX accepts mail for.
pub const MAIL_DOMAINS: &[&str] = &[
    "ca.example.test",
    "rpt-mail.example.test",
    "rpt-https.example.test",
    "rpt-dane.example.test",
    "norequiretls.example.test",
    "self.example.test",
    "plain.example.test",
    "backup.example.test",
    "implicit.example.test",
    "noaddr.example.test",
    "nullmx.example.test",
    "lan.test",
    "bogus.example.test",
    "insecure.example.test",
    "alias.example.test",
    // DANE, MTA-STS and TLS scenarios (issue 3), see [`test_zones`].
    "dane-ee.example.test",
    "dane-ta.example.test",
    "dane-mismatch.example.test",
    "dane-selector.example.test",
    "dane-plain.example.test",
    "dane-otherca.example.test",
    "tlsa-bogus.example.test",
    "bogus-host.example.test",
    "dane-insecure.example.test",
    "expired.example.test",
    "tls10.example.test",
    "otherca.example.test",
    "two-mx.example.test",
    "sts-dane.example.test",
    "sts-testing.example.test",
    "sts-ok.insecure.example.test",
    "sts-nomx.insecure.example.test",
    "sts-wrongname.insecure.example.test",
    "pkix.insecure.example.test",
];

/// One receiving MX (a Postfix instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mx {
    /// mx-ca.example.test, 127.0.20.1: STARTTLS with a certificate from the test CA
    /// (names mx-ca.example.test and implicit.example.test).
    Ca,
    /// mx-self.example.test, 127.0.20.2: STARTTLS with a self-signed certificate.
    SelfSigned,
    /// mx-plain.example.test, 127.0.20.3: no STARTTLS at all.
    Plain,
    /// mx.lan.test, 127.0.20.4: the MX of the LAN's own domain `lan.test`, where
    /// DSNs to LAN senders arrive. STARTTLS with a certificate from the test CA.
    Lan,
    /// mx-dane-ee.example.test, 127.0.20.10: self-signed certificate, published as
    /// TLSA 3 1 1 (DANE-EE, SPKI SHA-256).
    DaneEe,
    /// mx-dane-ta.example.test, 127.0.20.11: test-CA certificate (chain includes the
    /// CA), published as TLSA 2 0 1 of the test CA.
    DaneTa,
    /// mx-sts.insecure.example.test, 127.0.20.12: test-CA certificate; its name lies
    /// in the unsigned zone, so only MTA-STS can make it `verified`.
    Sts,
    /// mx-expired.example.test, 127.0.20.13: test-CA certificate that expired in 2021.
    Expired,
    /// mx-tls10.example.test, 127.0.20.14: test-CA certificate, TLS 1.0 only.
    Tls10,
    /// mx-otherca.example.test, 127.0.20.15: certificate from a second CA that no
    /// relay trusts.
    OtherCa,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    CaSigned,
    SelfSigned,
    None,
    /// Signed by the test CA, validity 2020-01-01 .. 2021-01-01.
    Expired,
    /// Signed by another CA (`other-ca.pem`, not in any relay's `ca_file`).
    OtherCa,
}

impl Mx {
    /// The general-purpose MXes (every test may send to them).
    pub const ALL: [Mx; 4] = [Mx::Ca, Mx::SelfSigned, Mx::Plain, Mx::Lan];
    /// The MXes of the DANE / MTA-STS / TLS scenarios (issue 3).
    pub const SCENARIO: [Mx; 6] = [
        Mx::DaneEe,
        Mx::DaneTa,
        Mx::Sts,
        Mx::Expired,
        Mx::Tls10,
        Mx::OtherCa,
    ];

    /// Instance name (directory under `<state>/postfix/`).
    pub fn name(self) -> &'static str {
        match self {
            Mx::Ca => "mx-ca",
            Mx::SelfSigned => "mx-self",
            Mx::Plain => "mx-plain",
            Mx::Lan => "mx-lan",
            Mx::DaneEe => "mx-dane-ee",
            Mx::DaneTa => "mx-dane-ta",
            Mx::Sts => "mx-sts",
            Mx::Expired => "mx-expired",
            Mx::Tls10 => "mx-tls10",
            Mx::OtherCa => "mx-otherca",
        }
    }

    pub fn hostname(self) -> &'static str {
        match self {
            Mx::Ca => "mx-ca.example.test",
            Mx::SelfSigned => "mx-self.example.test",
            Mx::Plain => "mx-plain.example.test",
            Mx::Lan => "mx.lan.test",
            Mx::DaneEe => "mx-dane-ee.example.test",
            Mx::DaneTa => "mx-dane-ta.example.test",
            Mx::Sts => "mx-sts.insecure.example.test",
            Mx::Expired => "mx-expired.example.test",
            Mx::Tls10 => "mx-tls10.example.test",
            Mx::OtherCa => "mx-otherca.example.test",
        }
    }

    pub fn ip(self) -> Ipv4Addr {
        match self {
            Mx::Ca => Ipv4Addr::new(127, 0, 20, 1),
            Mx::SelfSigned => Ipv4Addr::new(127, 0, 20, 2),
            Mx::Plain => Ipv4Addr::new(127, 0, 20, 3),
            Mx::Lan => Ipv4Addr::new(127, 0, 20, 4),
            Mx::DaneEe => Ipv4Addr::new(127, 0, 20, 10),
            Mx::DaneTa => Ipv4Addr::new(127, 0, 20, 11),
            Mx::Sts => Ipv4Addr::new(127, 0, 20, 12),
            Mx::Expired => Ipv4Addr::new(127, 0, 20, 13),
            Mx::Tls10 => Ipv4Addr::new(127, 0, 20, 14),
            Mx::OtherCa => Ipv4Addr::new(127, 0, 20, 15),
        }
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::new(self.ip().into(), 25)
    }

    fn tls(self) -> TlsMode {
        match self {
            Mx::Ca | Mx::Lan | Mx::DaneTa | Mx::Sts | Mx::Tls10 => TlsMode::CaSigned,
            Mx::SelfSigned | Mx::DaneEe => TlsMode::SelfSigned,
            Mx::Plain => TlsMode::None,
            Mx::Expired => TlsMode::Expired,
            Mx::OtherCa => TlsMode::OtherCa,
        }
    }

    /// Extra main.cf settings of this instance.
    fn extra_main_cf(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // TLS 1.0 only. OpenSSL 3 refuses TLS < 1.2 above security level 0.
            Mx::Tls10 => &[
                ("smtpd_tls_protocols", ">=TLSv1 <=TLSv1"),
                ("smtpd_tls_mandatory_protocols", ">=TLSv1 <=TLSv1"),
                ("smtpd_tls_ciphers", "medium"),
                ("smtpd_tls_mandatory_ciphers", "medium"),
                ("tls_medium_cipherlist", "DEFAULT:@SECLEVEL=0"),
            ],
            _ => &[],
        }
    }

    /// DNS names in this MX's certificate.
    fn cert_names(self) -> &'static [&'static str] {
        match self {
            Mx::Ca => &["mx-ca.example.test", "implicit.example.test"],
            Mx::SelfSigned => &["mx-self.example.test"],
            Mx::Plain => &[],
            Mx::Lan => &["mx.lan.test"],
            Mx::DaneEe => &["mx-dane-ee.example.test"],
            Mx::DaneTa => &["mx-dane-ta.example.test"],
            Mx::Sts => &["mx-sts.insecure.example.test"],
            Mx::Expired => &["mx-expired.example.test"],
            Mx::Tls10 => &["mx-tls10.example.test"],
            Mx::OtherCa => &["mx-otherca.example.test"],
        }
    }
}

const EC_KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// Make `<name>.key`, `<name>.pem` and `<name>-chain.pem` (leaf, then the issuing
/// CA unless self-signed) in `dir`.
fn make_leaf(dir: &Path, name: &str, cn: &str, names: &[&str], mode: TlsMode) -> Result<()> {
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let cnf = format!(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n\
         [leaf]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n\
         subjectAltName = {sans}\n",
        sans = sans.join(","),
    );
    let cnf_file = format!("{name}.cnf");
    let key = format!("{name}.key");
    let crt = format!("{name}.pem");
    let csr = format!("{name}.csr");
    fs::write(dir.join(&cnf_file), cnf)?;
    let ca = match mode {
        TlsMode::None => return Ok(()),
        TlsMode::SelfSigned => {
            run_in(
                dir,
                "openssl",
                &[
                    &["req", "-x509", "-new", "-nodes", "-config", &cnf_file][..],
                    &["-extensions", "leaf", "-days", "825"],
                    &EC_KEY,
                    &["-keyout", &key, "-out", &crt],
                ]
                .concat(),
            )?;
            None
        }
        TlsMode::CaSigned | TlsMode::OtherCa | TlsMode::Expired => {
            let ca = if mode == TlsMode::OtherCa {
                "other-ca"
            } else {
                "ca"
            };
            run_in(
                dir,
                "openssl",
                &[
                    &["req", "-new", "-nodes", "-config", &cnf_file][..],
                    &EC_KEY,
                    &["-keyout", &key, "-out", &csr],
                ]
                .concat(),
            )?;
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            if mode == TlsMode::Expired {
                // `openssl x509 -req` (OpenSSL 3.0) cannot set dates in the past;
                // `openssl ca` can.
                let db = format!("{name}.index");
                fs::write(dir.join(&db), "")?;
                fs::write(dir.join(format!("{name}.serial")), "1000\n")?;
                fs::write(
                    dir.join(format!("{name}-ca.cnf")),
                    format!(
                        "[ca]\ndefault_ca = d\n[d]\ndatabase = {db}\nnew_certs_dir = .\n\
                         serial = {name}.serial\ndefault_md = sha256\npolicy = p\n\
                         unique_subject = no\n[p]\ncommonName = supplied\n"
                    ),
                )?;
                run_in(
                    dir,
                    "openssl",
                    &[
                        "ca",
                        "-batch",
                        "-notext",
                        "-config",
                        &format!("{name}-ca.cnf"),
                        "-cert",
                        &ca_pem,
                        "-keyfile",
                        &ca_key,
                        "-in",
                        &csr,
                        "-startdate",
                        "20200101000000Z",
                        "-enddate",
                        "20210101000000Z",
                        "-extfile",
                        &cnf_file,
                        "-extensions",
                        "leaf",
                        "-out",
                        &crt,
                    ],
                )?;
            } else {
                run_in(
                    dir,
                    "openssl",
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        &ca_pem,
                        "-CAkey",
                        &ca_key,
                        "-CAcreateserial",
                        "-days",
                        "825",
                        "-extfile",
                        &cnf_file,
                        "-extensions",
                        "leaf",
                        "-out",
                        &crt,
                    ],
                )?;
            }
            Some(ca_pem)
        }
    };
    let mut chain = fs::read_to_string(dir.join(&crt))?;
    if let Some(ca) = ca {
        chain += &fs::read_to_string(dir.join(ca))?;
    }
    fs::write(dir.join(format!("{name}-chain.pem")), chain)?;
    fs::set_permissions(dir.join(&key), fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// The running infrastructure (one per test process, shared by all of them).
#[derive(Debug)]
pub struct Infra {
    pub state_dir: PathBuf,
    /// PEM file with the test CA certificate (give to the relay as `tls.ca_file`).
    pub ca_file: PathBuf,
}

static INFRA: OnceLock<Infra> = OnceLock::new();

/// The state directory shared by all test processes.
pub fn state_dir() -> PathBuf {
    std::env::var_os("QRELAY_TEST_INFRA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/qrelay-test-infra"))
}

/// A held exclusive lock on a file (released on drop).
pub struct FileLock {
    file: File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> Result<FileLock> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open lock {}", path.display()))?;
        file.lock()
            .with_context(|| format!("lock {}", path.display()))?;
        Ok(FileLock { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Infra {
    /// Start (or reuse) the whole infrastructure. Panics with a readable message if
    /// it cannot be brought up: no test can do anything useful without it.
    pub fn get() -> &'static Infra {
        INFRA.get_or_init(|| match Infra::ensure() {
            Ok(i) => i,
            Err(e) => panic!("test infrastructure failed to start: {e:#}"),
        })
    }

    fn ensure() -> Result<Infra> {
        let state = state_dir();
        fs::create_dir_all(&state)?;
        let _lock = FileLock::acquire(&state.join("infra.lock"))?;
        let infra = Infra {
            ca_file: state.join("certs/ca.pem"),
            state_dir: state.clone(),
        };
        let gen_file = state.join("generation");
        let current = fs::read_to_string(&gen_file).unwrap_or_default();
        if current == GENERATION && infra.healthy() {
            return Ok(infra);
        }
        // Stop whatever half-state is there and build everything fresh.
        infra.teardown()?;
        for sub in ["certs", "knot", "postfix", "nginx"] {
            let p = state.join(sub);
            if p.exists() {
                fs::remove_dir_all(&p).with_context(|| format!("remove {}", p.display()))?;
            }
        }
        let _ = fs::remove_file(&gen_file);
        ensure_default_postfix_config()?;
        infra.make_certs().context("test certificates")?;
        infra.start_knot().context("Knot DNS")?;
        infra.start_nginx().context("nginx (MTA-STS policy host)")?;
        // The Postfix instances are independent: start them side by side.
        let mut instances: Vec<PostfixInstance> = Mx::ALL
            .iter()
            .chain(Mx::SCENARIO.iter())
            .map(|m| PostfixInstance::mx(*m))
            .collect();
        instances.push(PostfixInstance::lan_mta());
        std::thread::scope(|s| {
            let handles: Vec<_> = instances
                .iter()
                .map(|inst| {
                    let infra = &infra;
                    s.spawn(move || {
                        infra
                            .start_postfix(inst)
                            .with_context(|| format!("Postfix {}", inst.name))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("postfix start thread"))
                .collect::<Result<Vec<()>>>()
        })?;
        infra.wait_healthy(Duration::from_secs(30))?;
        fs::write(&gen_file, GENERATION)?;
        Ok(infra)
    }

    /// Stop every daemon of the infrastructure (uses `tests/infra-down`).
    pub fn teardown(&self) -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("infra-down");
        let st = Command::new("bash")
            .arg(&script)
            .env("QRELAY_TEST_INFRA", &self.state_dir)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("run {}", script.display()))?;
        if !st.success() {
            bail!("{} failed: {st}", script.display());
        }
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.check_health().is_ok()
    }

    fn check_health(&self) -> Result<()> {
        let answer = kdig("MX", "ca.example.test")?;
        if !answer.contains("mx-ca.example.test.") {
            bail!("Knot answers MX ca.example.test with {answer:?}");
        }
        let mut addrs: Vec<SocketAddr> = Mx::ALL
            .iter()
            .chain(Mx::SCENARIO.iter())
            .map(|m| m.addr())
            .collect();
        addrs.push(LAN_MTA_ADDR.parse()?);
        addrs.push(SocketAddr::new(STS_HTTPS_IP.parse()?, 443));
        for a in addrs {
            TcpStream::connect_timeout(&a, Duration::from_secs(2))
                .with_context(|| format!("connect to Postfix at {a}"))?;
        }
        Ok(())
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            match self.check_health() {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    return Err(e.context("infrastructure did not come up"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The Maildir that receives every message delivered to `mx`.
    pub fn mailbox(&self, mx: Mx) -> Mailbox {
        Mailbox::new(self.postfix_dir(mx.name()).join("mail/mail"))
    }

    /// The last `lines` lines of a Postfix instance's log (for failure messages).
    pub fn maillog_tail(&self, instance: &str, lines: usize) -> String {
        tail_file(&self.postfix_dir(instance).join("maillog"), lines)
    }

    /// The log of the LAN Postfix.
    pub fn lan_mta_log_tail(&self, lines: usize) -> String {
        self.maillog_tail("lan-mta", lines)
    }

    /// Serialises the tests that run a relay on [`LAN_RELAY_ADDR`].
    pub fn lan_relay_lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.state_dir.join("lan-relay.lock"))
    }

    fn postfix_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("postfix").join(name)
    }

    fn certs_dir(&self) -> PathBuf {
        self.state_dir.join("certs")
    }

    // ---------------------------------------------------------------- certificates

    fn make_certs(&self) -> Result<()> {
        let dir = self.certs_dir();
        fs::create_dir_all(&dir)?;
        for (ca, cn) in [("ca", "qrelay test CA"), ("other-ca", "unknown test CA")] {
            fs::write(
                dir.join(format!("{ca}.cnf")),
                format!(
                    "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n\
                     [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
                     keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
                ),
            )?;
            let (cnf, key, pem) = (
                format!("{ca}.cnf"),
                format!("{ca}.key"),
                format!("{ca}.pem"),
            );
            run_in(
                &dir,
                "openssl",
                &[
                    &["req", "-x509", "-new", "-nodes", "-config", &cnf][..],
                    &["-extensions", "v3_ca", "-days", "3650"],
                    &EC_KEY,
                    &["-keyout", &key, "-out", &pem],
                ]
                .concat(),
            )?;
        }
        for mx in Mx::ALL.iter().chain(Mx::SCENARIO.iter()) {
            if mx.tls() == TlsMode::None {
                continue;
            }
            make_leaf(&dir, mx.name(), mx.hostname(), mx.cert_names(), mx.tls())?;
        }
        // MTA-STS policy hosts: one test-CA certificate naming every good policy
        // host (no wildcard, standards.md B5), and one for another name.
        let good: Vec<String> = STS_POLICY_HOSTS
            .iter()
            .filter(|(_, _, _, good)| *good)
            .map(|(d, _, _, _)| format!("mta-sts.{d}"))
            .collect();
        let good: Vec<&str> = good.iter().map(String::as_str).collect();
        make_leaf(&dir, "mta-sts", good[0], &good, TlsMode::CaSigned)?;
        make_leaf(
            &dir,
            "mx-requiretls",
            "mx-requiretls.example.test",
            &["mx-requiretls.example.test"],
            TlsMode::CaSigned,
        )?;
        make_leaf(
            &dir,
            "tlsrpt",
            "tlsrpt.example.test",
            &["tlsrpt.example.test"],
            TlsMode::CaSigned,
        )?;
        make_leaf(
            &dir,
            "mta-sts-wrong",
            "mta-sts.elsewhere.example.test",
            &["mta-sts.elsewhere.example.test"],
            TlsMode::CaSigned,
        )?;
        Ok(())
    }

    // ------------------------------------------------------------------------ Knot

    fn start_knot(&self) -> Result<()> {
        let dir = self.state_dir.join("knot");
        let zones = dir.join("zones");
        let run = dir.join("run");
        let storage = dir.join("storage");
        for d in [&zones, &run, &storage] {
            fs::create_dir_all(d)?;
        }
        let mut zone_list = test_zones();
        let mut conf = String::new();
        let (ip, port) = DNS_ADDR.split_once(':').expect("ip:port");
        writeln!(conf, "server:")?;
        writeln!(conf, "    rundir: \"{}\"", run.display())?;
        writeln!(conf, "    pidfile: \"{}\"", run.join("knot.pid").display())?;
        writeln!(conf, "    listen: {ip}@{port}")?;
        writeln!(
            conf,
            "log:\n  - target: \"{}\"\n    any: info",
            dir.join("knot.log").display()
        )?;
        writeln!(conf, "database:\n    storage: \"{}\"", storage.display())?;
        writeln!(
            conf,
            "control:\n    listen: \"{}\"",
            run.join("knot.sock").display()
        )?;
        // Signed zones: one ECDSA P-256 key per zone (a combined signing key),
        // generated below with keymgr before knotd starts, so the DS records can go
        // into the parent zones' files; NSEC (not NSEC3), as the field notes tested.
        writeln!(conf, "policy:\n  - id: test")?;
        writeln!(conf, "    manual: on")?;
        writeln!(conf, "    algorithm: ecdsap256sha256")?;
        writeln!(conf, "    single-type-signing: on")?;
        writeln!(conf, "    nsec3: off")?;
        writeln!(conf, "template:\n  - id: default")?;
        writeln!(conf, "    storage: \"{}\"", zones.display())?;
        writeln!(conf, "    zonefile-sync: -1")?;
        writeln!(conf, "    zonefile-load: whole")?;
        writeln!(conf, "    journal-content: none")?;
        writeln!(conf, "    dnssec-signing: on")?;
        writeln!(conf, "    dnssec-policy: test")?;
        writeln!(conf, "zone:")?;
        for z in &zone_list {
            writeln!(conf, "  - domain: {}", z.fqdn())?;
            writeln!(conf, "    file: \"{}.zone\"", z.file_stem())?;
            if z.chain == Chain::Insecure {
                writeln!(conf, "    dnssec-signing: off")?;
            }
        }
        let conf_file = dir.join("knot.conf");
        fs::write(&conf_file, &conf)?;
        run_in(&dir, "knotc", &["-c", path_str(&conf_file)?, "conf-check"])?;
        delegate_and_sign(&dir, &conf_file, &mut zone_list)?;
        for z in &zone_list {
            fs::write(zones.join(format!("{}.zone", z.file_stem())), z.render())?;
        }
        let log = File::create(dir.join("knotd.out"))?;
        let st = Command::new("knotd")
            .args(["-c", path_str(&conf_file)?, "-d"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("run knotd")?;
        if !st.success() {
            bail!(
                "knotd -d failed ({st}): {}",
                tail_file(&dir.join("knotd.out"), 20)
            );
        }
        let start = Instant::now();
        loop {
            match kdig("MX", "ca.example.test") {
                Ok(a) if a.contains("mx-ca.example.test.") => return Ok(()),
                r if start.elapsed() > Duration::from_secs(15) => bail!(
                    "Knot does not answer ({r:?}); log:\n{}",
                    tail_file(&dir.join("knot.log"), 30)
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    // ----------------------------------------------------------------------- nginx

    /// nginx on [`STS_HTTPS_IP`]:443 serving the MTA-STS policies of
    /// [`STS_POLICY_HOSTS`], one server block (SNI name) per policy host.
    fn start_nginx(&self) -> Result<()> {
        let dir = self.state_dir.join("nginx");
        let policies = dir.join("policies");
        fs::create_dir_all(&policies)?;
        for sub in ["", "policies"] {
            fs::set_permissions(dir.join(sub), fs::Permissions::from_mode(0o755))?;
        }
        let certs = self.certs_dir();
        let mut conf = String::new();
        writeln!(conf, "daemon on;\nworker_processes 1;")?;
        writeln!(conf, "pid {};", dir.join("nginx.pid").display())?;
        writeln!(conf, "error_log {} info;", dir.join("error.log").display())?;
        writeln!(conf, "events {{ worker_connections 256; }}")?;
        writeln!(conf, "http {{")?;
        writeln!(conf, "  access_log {};", dir.join("access.log").display())?;
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            writeln!(
                conf,
                "  {t}_temp_path {};",
                dir.join(format!("tmp-{t}")).display()
            )?;
        }
        writeln!(conf, "  default_type text/plain;")?;
        for (domain, mode, mx, good) in STS_POLICY_HOSTS {
            let file = policies.join(format!("{domain}.txt"));
            fs::write(
                &file,
                format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"),
            )?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
            let cert = if *good { "mta-sts" } else { "mta-sts-wrong" };
            writeln!(conf, "  server {{")?;
            writeln!(conf, "    listen {STS_HTTPS_IP}:443 ssl;")?;
            writeln!(conf, "    server_name mta-sts.{domain};")?;
            writeln!(
                conf,
                "    ssl_certificate {};",
                certs.join(format!("{cert}-chain.pem")).display()
            )?;
            writeln!(
                conf,
                "    ssl_certificate_key {};",
                certs.join(format!("{cert}.key")).display()
            )?;
            writeln!(
                conf,
                "    location = /.well-known/mta-sts.txt {{ alias {}; }}",
                file.display()
            )?;
            writeln!(conf, "    location / {{ return 404; }}")?;
            writeln!(conf, "  }}")?;
        }
        writeln!(conf, "}}")?;
        let conf_file = dir.join("nginx.conf");
        fs::write(&conf_file, conf)?;
        run_in(&dir, "nginx", &["-c", path_str(&conf_file)?, "-t", "-q"])?;
        run_in(&dir, "nginx", &["-c", path_str(&conf_file)?])?;
        Ok(())
    }

    // --------------------------------------------------------------------- Postfix

    /// Create `<state>/postfix/<name>/{etc,queue,data,mail}` with the ownership and
    /// modes Postfix insists on; returns the instance directory.
    fn prepare_postfix_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.postfix_dir(name);
        for sub in ["etc", "queue", "data", "mail"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let postfix_uid = user_id("postfix")?;
        let nobody = user_id("nobody")?;
        nix::unistd::chown(&dir.join("data"), Some(postfix_uid.0), Some(postfix_uid.1))?;
        nix::unistd::chown(&dir.join("mail"), Some(nobody.0), Some(nobody.1))?;
        // Postfix wants every parent of its queue to be root-owned and not
        // group/world writable; the state dir is made by us with mode 0755.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&self.state_dir, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(
            dir.parent().expect("parent"),
            fs::Permissions::from_mode(0o755),
        )?;
        Ok(dir)
    }

    /// Write main.cf (given) and master.cf (smtpd on `listen`, the stock services)
    /// of a prepared instance and run `postfix -c etc start`.
    fn launch_postfix(&self, dir: &Path, main_cf: &str, listen: &str) -> Result<()> {
        let etc = dir.join("etc");
        fs::write(etc.join("main.cf"), main_cf)?;
        fs::write(etc.join("master.cf"), master_cf(listen))?;
        let out = dir.join("postfix.out");
        let log = File::create(&out)?;
        let st = Command::new("postfix")
            .args(["-c", path_str(&etc)?, "start"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("run postfix start")?;
        if !st.success() {
            bail!(
                "postfix -c {} start failed ({st}):\n{}\n{}",
                etc.display(),
                tail_file(&out, 20),
                tail_file(&dir.join("maillog"), 20)
            );
        }
        Ok(())
    }

    fn start_postfix(&self, inst: &PostfixInstance) -> Result<()> {
        let dir = self.prepare_postfix_dir(&inst.name)?;
        let queue = dir.join("queue");
        let data = dir.join("data");
        let mail = dir.join("mail");
        let nobody = user_id("nobody")?;

        let mut main = String::new();
        let mut kv = |k: &str, v: &str| {
            let _ = writeln!(main, "{k} = {v}");
        };
        kv("compatibility_level", "3.6");
        kv("queue_directory", path_str(&queue)?);
        kv("data_directory", path_str(&data)?);
        kv("mail_owner", "postfix");
        kv("setgid_group", "postdrop");
        kv("myhostname", &inst.hostname);
        kv("mydomain", "example.test");
        kv("myorigin", "$myhostname");
        kv("mydestination", "");
        kv("inet_interfaces", "loopback-only");
        kv("inet_protocols", "ipv4");
        kv("mynetworks", "127.0.0.0/8");
        kv("biff", "no");
        kv("append_dot_mydomain", "no");
        kv("smtputf8_enable", "yes");
        kv("message_size_limit", "104857600");
        kv("mailbox_size_limit", "0");
        kv("virtual_mailbox_limit", "0");
        kv("maillog_file", path_str(&dir.join("maillog"))?);
        kv("maillog_file_prefixes", path_str(&dir)?);
        kv("smtpd_tls_received_header", "yes");
        kv("smtpd_tls_loglevel", "1");
        kv(
            "smtpd_banner",
            "$myhostname ESMTP Postfix (qrelay test peer)",
        );
        kv("smtpd_helo_required", "no");
        kv("anvil_rate_time_unit", "60s");
        kv("smtpd_client_connection_count_limit", "1000");
        kv("smtpd_client_connection_rate_limit", "0");
        kv("default_process_limit", "100");
        kv("alias_maps", "");
        kv("alias_database", "");
        kv("local_recipient_maps", "");
        match &inst.role {
            Role::Mx => {
                kv("virtual_mailbox_domains", &MAIL_DOMAINS.join(" "));
                kv("virtual_mailbox_base", path_str(&mail)?);
                // Every address of every domain goes into one Maildir: mail/
                kv("virtual_mailbox_maps", "static:mail/");
                kv("virtual_uid_maps", &format!("static:{}", nobody.0));
                kv("virtual_gid_maps", &format!("static:{}", nobody.1));
                kv(
                    "smtpd_recipient_restrictions",
                    "check_recipient_access inline:{ {reject550@=550 5.1.1 no such user}, \
                     {defer450@=450 4.2.0 try later} }, permit_mynetworks, \
                     reject_unauth_destination",
                );
                // A test MX never sends mail anywhere (its own bounces included).
                kv("default_transport", "error:test MX sends no mail");
                kv("relay_transport", "error:test MX sends no mail");
                kv("notify_classes", "");
            }
            Role::LanMta { relayhost } => {
                kv("relayhost", relayhost);
                kv("smtp_tls_security_level", "may");
                kv("smtp_tls_loglevel", "1");
                kv("queue_run_delay", "1s");
                kv("minimal_backoff_time", "1s");
                kv("maximal_backoff_time", "2s");
                kv("smtp_connect_timeout", "5s");
                kv("smtpd_recipient_restrictions", "permit_mynetworks, reject");
            }
        }
        for (k, v) in inst.extra {
            kv(k, v);
        }
        match inst.tls {
            TlsMode::None => kv("smtpd_tls_security_level", "none"),
            _ => {
                let certs = self.certs_dir();
                kv("smtpd_tls_security_level", "may");
                kv(
                    "smtpd_tls_cert_file",
                    path_str(&certs.join(format!("{}-chain.pem", inst.name)))?,
                );
                kv(
                    "smtpd_tls_key_file",
                    path_str(&certs.join(format!("{}.key", inst.name)))?,
                );
            }
        }
        self.launch_postfix(&dir, &main, &inst.listen)
    }

    /// The directory of the test certificates (`<name>.key`, `<name>-chain.pem` for
    /// each [`Mx`] with TLS, `ca.pem`).
    pub fn certs(&self) -> PathBuf {
        self.certs_dir()
    }
}

// ---------------------------------------------------------- short-lived instances

/// A Postfix instance outside the long-lived set, for the benchmark: its relays
/// under test and its TLS sink. It lives in `<state>/postfix/<name>/` (so
/// `tests/infra-down` stops it too if its owner dies) and is stopped and deleted
/// on drop.
///
/// Its main.cf is Postfix's defaults plus only what an instance on loopback needs
/// (own queue, log file, IPv4, no local delivery) and the caller's `settings`,
/// so a benchmark compares against stock Postfix behaviour.
pub struct ExtraPostfix {
    pub name: String,
    pub dir: PathBuf,
    stopped: bool,
}

impl ExtraPostfix {
    /// Start instance `name` with smtpd on `listen` (ip:port). A leftover instance
    /// of the same name (from a killed run) is stopped and wiped first.
    pub fn start(
        infra: &Infra,
        name: &str,
        listen: &str,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = infra.postfix_dir(name);
        let mut inst = ExtraPostfix {
            name: name.into(),
            dir: dir.clone(),
            stopped: false,
        };
        inst.stop();
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        inst.stopped = false;
        ensure_default_postfix_config()?;
        infra.prepare_postfix_dir(name)?;
        let mut main = String::new();
        let (queue, data, log) = (dir.join("queue"), dir.join("data"), dir.join("maillog"));
        let base = [
            ("compatibility_level", "3.6"),
            ("queue_directory", path_str(&queue)?),
            ("data_directory", path_str(&data)?),
            ("mail_owner", "postfix"),
            ("setgid_group", "postdrop"),
            ("maillog_file", path_str(&log)?),
            ("maillog_file_prefixes", path_str(&dir)?),
            ("inet_interfaces", "loopback-only"),
            ("inet_protocols", "ipv4"),
            ("mydestination", ""),
            ("alias_maps", ""),
            ("alias_database", ""),
            ("local_recipient_maps", ""),
            ("biff", "no"),
        ];
        for (k, v) in base.iter().chain(settings) {
            writeln!(main, "{k} = {v}")?;
        }
        infra
            .launch_postfix(&dir, &main, listen)
            .with_context(|| format!("Postfix {name}"))?;
        let addr: SocketAddr = listen.parse().context("listen address")?;
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if start.elapsed() > Duration::from_secs(15) {
                bail!(
                    "Postfix {name} does not accept on {listen}; log:\n{}",
                    inst.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(inst)
    }

    /// The queue directory (`incoming/`, `active/`, `deferred/`, ... below it).
    pub fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// The master process, from `<queue>/pid/master.pid`.
    pub fn master_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.queue_dir().join("pid/master.pid")).ok()?;
        text.trim().parse().ok()
    }

    /// Messages in the queue (files below incoming, active, deferred, hold, maildrop).
    pub fn queued(&self) -> usize {
        ["incoming", "active", "deferred", "hold", "maildrop"]
            .iter()
            .map(|q| count_files(&self.queue_dir().join(q)))
            .sum()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.dir.join("maillog"), lines)
    }

    /// `postfix stop`, then wait for the master to exit (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Some(pid) = self.master_pid() else {
            return;
        };
        let _ = Command::new("postfix")
            .args(["-c"])
            .arg(self.dir.join("etc"))
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let pid = nix::unistd::Pid::from_raw(pid);
        let alive = || nix::sys::signal::kill(pid, None).is_ok();
        let start = Instant::now();
        while alive() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for ExtraPostfix {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Regular files anywhere below `dir` (0 if it does not exist).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

enum Role {
    Mx,
    LanMta { relayhost: String },
}

struct PostfixInstance {
    name: String,
    hostname: String,
    listen: String,
    tls: TlsMode,
    role: Role,
    extra: &'static [(&'static str, &'static str)],
}

impl PostfixInstance {
    fn mx(mx: Mx) -> PostfixInstance {
        PostfixInstance {
            name: mx.name().into(),
            hostname: mx.hostname().into(),
            listen: mx.addr().to_string(),
            tls: mx.tls(),
            role: Role::Mx,
            extra: mx.extra_main_cf(),
        }
    }

    fn lan_mta() -> PostfixInstance {
        PostfixInstance {
            name: "lan-mta".into(),
            hostname: "mail.lan.test".into(),
            listen: LAN_MTA_ADDR.into(),
            tls: TlsMode::None,
            extra: &[],
            role: Role::LanMta {
                relayhost: {
                    let a: SocketAddr = LAN_RELAY_ADDR.parse().expect("literal");
                    format!("[{}]:{}", a.ip(), a.port())
                },
            },
        }
    }
}

fn master_cf(listen: &str) -> String {
    let services = [
        format!("{listen} inet n - n - - smtpd"),
        "pickup unix n - n 60 1 pickup".into(),
        "cleanup unix n - n - 0 cleanup".into(),
        "qmgr unix n - n 300 1 qmgr".into(),
        "tlsmgr unix - - n 1000? 1 tlsmgr".into(),
        "rewrite unix - - n - - trivial-rewrite".into(),
        "bounce unix - - n - 0 bounce".into(),
        "defer unix - - n - 0 bounce".into(),
        "trace unix - - n - 0 bounce".into(),
        "verify unix - - n - 1 verify".into(),
        "flush unix n - n 1000? 0 flush".into(),
        "proxymap unix - - n - - proxymap".into(),
        "proxywrite unix - - n - 1 proxymap".into(),
        "smtp unix - - n - - smtp".into(),
        "relay unix - - n - - smtp".into(),
        "showq unix n - n - - showq".into(),
        "error unix - - n - - error".into(),
        "retry unix - - n - - error".into(),
        "discard unix - - n - - discard".into(),
        "local unix - n n - - local".into(),
        "virtual unix - n n - - virtual".into(),
        "lmtp unix - - n - - lmtp".into(),
        "anvil unix - - n - 1 anvil".into(),
        "scache unix - - n - 1 scache".into(),
        "postlog unix-dgram n - n - 1 postlogd".into(),
    ];
    services.join("\n") + "\n"
}

/// `postfix` commands read /etc/postfix/main.cf first; a Debian install with "No
/// configuration" has none. Write a minimal one if it is missing (the stock
/// instance itself is never started).
fn ensure_default_postfix_config() -> Result<()> {
    let p = Path::new("/etc/postfix/main.cf");
    if !p.exists() {
        fs::write(p, "compatibility_level = 3.6\nmaillog_file = /dev/stdout\n")
            .context("write /etc/postfix/main.cf")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------- zones

/// How a zone hangs in the chain of trust below the test root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Signed, with the matching DS in its parent (for the root: the relay's trust
    /// anchor).
    Secure,
    /// Signed, but the parent's DS matches no key of the zone: every answer from it
    /// is bogus.
    Bogus,
    /// Unsigned, delegated without DS: every answer from it is provably insecure.
    Insecure,
}

/// A DNS zone served by Knot; add records here when a test needs them. Relative
/// owner names are relative to the origin. NS, glue and DS records for delegations
/// to other zones of [`test_zones`] are added by the harness.
pub struct Zone {
    /// The zone name without the final dot; `"."` for the root.
    pub origin: &'static str,
    pub records: Vec<String>,
    pub chain: Chain,
}

impl Zone {
    /// The absolute zone name: `"example.test."`, `"."`.
    pub fn fqdn(&self) -> String {
        if self.origin == "." {
            ".".into()
        } else {
            format!("{}.", self.origin)
        }
    }

    /// The name server of the zone, absolute.
    fn ns(&self) -> String {
        if self.origin == "." {
            "ns.".into()
        } else {
            format!("ns.{}.", self.origin)
        }
    }

    fn file_stem(&self) -> &str {
        if self.origin == "." {
            "root"
        } else {
            self.origin
        }
    }

    /// The zone that delegates this one: the longest other zone it lies in.
    fn parent<'a>(&self, zones: &'a [Zone]) -> Option<&'a Zone> {
        zones
            .iter()
            .filter(|p| p.origin != self.origin && is_below(self.origin, p.origin))
            .max_by_key(|p| p.origin.len() + usize::from(p.origin != "."))
    }

    fn render(&self) -> String {
        let mut s = format!(
            "$ORIGIN {o}\n$TTL 60\n@ SOA {ns} {hm} 1 3600 600 86400 60\n\
             @ NS {ns}\n{ns} A {ip}\n",
            o = self.fqdn(),
            hm = if self.origin == "." {
                "hostmaster.".to_string()
            } else {
                format!("hostmaster.{}", self.fqdn())
            },
            ns = self.ns(),
            ip = DNS_ADDR.split_once(':').expect("ip:port").0,
        );
        for r in &self.records {
            s.push_str(r);
            s.push('\n');
        }
        s
    }
}

fn is_below(name: &str, zone: &str) -> bool {
    zone == "." || name.ends_with(&format!(".{zone}"))
}

/// A TLSA record for a DANE scenario: `tlsa("mx-ca", "3 1 1 <hex>")` is
/// `_25._tcp.mx-ca TLSA 3 1 1 <hex>` (owner relative to the zone it is added to).
pub fn tlsa(host: &str, rdata: &str) -> String {
    format!("_25._tcp.{host} TLSA {rdata}")
}

/// SHA-256 (hex) of the DER SubjectPublicKeyInfo of the certificate `<certs>/<name>.pem`.
pub fn spki_sha256(name: &str) -> String {
    let pem = state_dir().join("certs").join(format!("{name}.pem"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -noout -pubkey | openssl pkey -pubin -outform DER \
             | openssl dgst -sha256 -r",
        )
        .arg("sh")
        .arg(&pem)
        .output()
        .expect("run openssl");
    digest_of(&out.stdout, &pem)
}

/// SHA-256 (hex) of the DER certificate `<certs>/<name>.pem`.
pub fn cert_sha256(name: &str) -> String {
    let pem = state_dir().join("certs").join(format!("{name}.pem"));
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$1\" -outform DER | openssl dgst -sha256 -r")
        .arg("sh")
        .arg(&pem)
        .output()
        .expect("run openssl");
    digest_of(&out.stdout, &pem)
}

fn digest_of(out: &[u8], pem: &Path) -> String {
    let hex = String::from_utf8_lossy(out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        hex.len() == 64,
        "no SHA-256 digest for {} (certificates made?)",
        pem.display()
    );
    hex
}

/// DANE scenario records of `example.test` (TLSA at `_25._tcp.<mx>`, built with
/// [`tlsa`]), computed from the certificates made before Knot starts.
pub fn dane_records() -> Vec<String> {
    let ca_spki = spki_sha256("mx-ca");
    vec![
        // DANE-EE ok: SPKI of mx-dane-ee's own (self-signed) certificate.
        tlsa(
            "mx-dane-ee",
            &format!("3 1 1 {}", spki_sha256("mx-dane-ee")),
        ),
        // DANE-TA ok: the full test CA certificate (sent in the chain).
        tlsa("mx-dane-ta", &format!("2 0 1 {}", cert_sha256("ca"))),
        // Mismatch: a name for mx-ca (127.0.20.1) with another key's digest.
        tlsa(
            "mx-dane-mismatch",
            &format!("3 1 1 {}", spki_sha256("mx-self")),
        ),
        // Mismatch by selector: mx-ca's SPKI digest published as selector 0.
        tlsa("mx-dane-selector", &format!("3 0 1 {ca_spki}")),
        // A usable TLSA record on the MX without STARTTLS (127.0.20.3).
        tlsa("mx-dane-plain", &format!("3 1 1 {ca_spki}")),
        // Usage 2 with the test CA, but the server's chain is from another CA.
        tlsa("mx-dane-otherca", &format!("2 0 1 {}", cert_sha256("ca"))),
        // The TLSA RRset of a secure host lives (via CNAME) in the bogus zone.
        "_25._tcp.mx-tlsa-bogus CNAME _25._tcp.mx.bogus.example.test.".into(),
    ]
}

/// The test zones: a signed test root, the signed TLD `test.`, the signed
/// `example.test` and `lan.test`, and the DNSSEC scenarios `bogus.example.test`
/// (signed, wrong DS) and `insecure.example.test` (unsigned, no DS).
pub fn test_zones() -> Vec<Zone> {
    let mut example: Vec<String> = [
        "mx-ca A 127.0.20.1",
        "mx-self A 127.0.20.2",
        "mx-plain A 127.0.20.3",
        &format!("mx-down A {DOWN_ADDR}"),
        "ca MX 10 mx-ca",
        "self MX 10 mx-self",
        "plain MX 10 mx-plain",
        // Preferred MX down (nothing listens there), backup works.
        "backup MX 10 mx-down",
        "backup MX 20 mx-ca",
        // Null MX (RFC 7505).
        "nullmx MX 0 .",
        // Implicit MX: only an address record (RFC 5321 5.1).
        "implicit A 127.0.20.1",
        // The MX host has no address at all.
        "noaddr MX 10 mx-noaddr",
        // An MX host behind a CNAME (IPv4 only: its AAAA is NODATA at the target).
        "alias MX 10 mx-alias",
        "mx-alias CNAME mx-ca",
        // Benchmark destinations (tests/src/bin/bench.rs starts what listens there).
        &format!("mx-bench A {BENCH_SINK_IP}"),
        &format!("mx-bench-tls A {BENCH_TLS_SINK_IP}"),
        &format!("mx-bench-down A {BENCH_DOWN_IP}"),
        "bench MX 10 mx-bench",
        "bench-tls MX 10 mx-bench-tls",
        "bench-down MX 10 mx-bench-down",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    example.extend(
        [
            "mx-dane-ee A 127.0.20.10",
            "mx-dane-ta A 127.0.20.11",
            "mx-expired A 127.0.20.13",
            "mx-tls10 A 127.0.20.14",
            "mx-otherca A 127.0.20.15",
            "mx-dane-mismatch A 127.0.20.1",
            "mx-dane-selector A 127.0.20.1",
            "mx-dane-plain A 127.0.20.3",
            "mx-dane-otherca A 127.0.20.15",
            "mx-tlsa-bogus A 127.0.20.1",
            "dane-ee MX 10 mx-dane-ee",
            "dane-ta MX 10 mx-dane-ta",
            "dane-mismatch MX 10 mx-dane-mismatch",
            "dane-selector MX 10 mx-dane-selector",
            "dane-plain MX 10 mx-dane-plain",
            "dane-otherca MX 10 mx-dane-otherca",
            "tlsa-bogus MX 10 mx-tlsa-bogus",
            // The MX host lives in the bogus zone (its address and TLSA are bogus).
            "bogus-host MX 10 mx.bogus.example.test.",
            // The MX host lives in the unsigned zone, which publishes a wrong TLSA.
            "dane-insecure MX 10 mx.insecure.example.test.",
            "expired MX 10 mx-expired",
            "tls10 MX 10 mx-tls10",
            "otherca MX 10 mx-otherca",
            // Preferred MX self-signed, the second one DANE-EE.
            "two-mx MX 10 mx-self",
            "two-mx MX 20 mx-dane-ee",
            "sts-dane MX 10 mx-dane-ee",
            "sts-testing MX 10 mx-self",
            // REQUIRETLS (issue 4): the test peer advertises it; mx-ca (Postfix) not.
            &format!("mx-requiretls A {REQUIRETLS_PEER_IP}"),
            "requiretls MX 10 mx-requiretls",
            "norequiretls MX 10 mx-ca",
            // TLS-RPT (issue 4).
            &format!("tlsrpt A {TLSRPT_HTTPS_IP}"),
            "rpt-mail MX 10 mx-ca",
            "rpt-https MX 10 mx-ca",
            "rpt-dane MX 10 mx-dane-ee",
            // Its only MX presents an expired certificate: failures to report.
            "rpt-fail MX 10 mx-expired",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    example.extend(dane_records());
    for (domain, rua) in TLSRPT_DOMAINS {
        example.push(format!("_smtp._tls.{domain} TXT \"v=TLSRPTv1; rua={rua}\""));
    }
    example
        .push("_smtp._tls.rpt-fail TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@ca.example.test\"".into());
    // A DANE domain with a TLS-RPT policy (policy-type tlsa), reporting by mail.
    example
        .push("_smtp._tls.rpt-dane TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@ca.example.test\"".into());
    let lan = ["@ MX 10 mx", "mx A 127.0.20.4", "mail A 127.0.30.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let to_mx_ca = || vec!["@ MX 10 mx-ca.example.test.".to_string()];
    let mut bogus = to_mx_ca();
    bogus.push("mx A 127.0.20.1".into());
    bogus.push(tlsa("mx", &format!("3 1 1 {}", spki_sha256("mx-ca"))));
    let mut insecure = to_mx_ca();
    insecure.extend([
        "mx A 127.0.20.1".to_string(),
        // Would never match (digest of zeros): must be ignored, the zone is unsigned.
        tlsa("mx", &format!("3 1 1 {}", "00".repeat(32))),
        "mx-sts A 127.0.20.12".into(),
        // PKIX-valid MX name, but no DNSSEC and no MTA-STS: at most trusted.
        "pkix MX 10 mx-sts".into(),
    ]);
    let mut sts_example = Vec::new();
    for (i, (domain, _, _, _)) in STS_POLICY_HOSTS.iter().enumerate() {
        let (zone_recs, rel) = if let Some(r) = domain.strip_suffix(".insecure.example.test") {
            (&mut insecure, r)
        } else {
            let r = domain
                .strip_suffix(".example.test")
                .expect("STS domain in example.test");
            (&mut sts_example, r)
        };
        if domain.ends_with(".insecure.example.test") {
            zone_recs.push(format!("{rel} MX 10 mx-sts"));
        }
        zone_recs.push(format!("_mta-sts.{rel} TXT \"v=STSv1; id=2025{i:04}\""));
        zone_recs.push(format!("mta-sts.{rel} A {STS_HTTPS_IP}"));
    }
    example.extend(sts_example);
    vec![
        Zone {
            origin: ".",
            records: Vec::new(),
            chain: Chain::Secure,
        },
        Zone {
            origin: "test",
            records: Vec::new(),
            chain: Chain::Secure,
        },
        Zone {
            origin: "example.test",
            records: example,
            chain: Chain::Secure,
        },
        Zone {
            origin: "lan.test",
            records: lan,
            chain: Chain::Secure,
        },
        Zone {
            origin: "bogus.example.test",
            records: bogus,
            chain: Chain::Bogus,
        },
        Zone {
            origin: "insecure.example.test",
            records: insecure,
            chain: Chain::Insecure,
        },
    ]
}

/// The relay's DNSSEC trust anchor for the test root (a DS line), written by the
/// harness when Knot starts.
pub fn trust_anchor_file() -> PathBuf {
    state_dir().join("knot/root.ds")
}

/// Generate a key per signed zone (keymgr, offline, before knotd runs), add NS,
/// glue and DS records for every delegation to the parent zones, and write the test
/// root's DS as the trust anchor file.
fn delegate_and_sign(dir: &Path, conf: &Path, zones: &mut [Zone]) -> Result<()> {
    let conf = path_str(conf)?;
    let mut ds_of: Vec<(String, String)> = Vec::new();
    for z in zones.iter().filter(|z| z.chain != Chain::Insecure) {
        let fqdn = z.fqdn();
        run_in(
            dir,
            "keymgr",
            &[
                "-c",
                conf,
                &fqdn,
                "generate",
                "algorithm=ecdsap256sha256",
                "ksk=yes",
                "zsk=yes",
            ],
        )?;
        let out = Command::new("keymgr")
            .args(["-c", conf, &fqdn, "ds"])
            .current_dir(dir)
            .output()
            .context("run keymgr ds")?;
        if !out.status.success() {
            bail!("keymgr {fqdn} ds: {}", String::from_utf8_lossy(&out.stderr));
        }
        // "<zone>. DS <tag> 13 2 <hex>": keep the SHA-256 one.
        let ds = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("2"))
            .map(str::to_string)
            .with_context(|| format!("no SHA-256 DS from keymgr for {fqdn}"))?;
        ds_of.push((z.origin.to_string(), ds));
    }
    let dns_ip = DNS_ADDR.split_once(':').expect("ip:port").0;
    let mut additions: Vec<(usize, Vec<String>)> = Vec::new();
    for z in zones.iter() {
        let Some(parent) = z.parent(zones) else {
            continue;
        };
        let pi = zones
            .iter()
            .position(|p| p.origin == parent.origin)
            .expect("parent in list");
        let mut recs = vec![
            format!("{} NS {}", z.fqdn(), z.ns()),
            format!("{} A {dns_ip}", z.ns()),
        ];
        let ds = ds_of.iter().find(|(o, _)| o == z.origin).map(|(_, d)| d);
        match (z.chain, ds) {
            (Chain::Secure, Some(ds)) => recs.push(ds.clone()),
            (Chain::Bogus, Some(ds)) => {
                // Same key tag and algorithm, wrong digest: matches no key.
                let f: Vec<&str> = ds.split_whitespace().collect();
                recs.push(format!(
                    "{} DS {} {} 2 {}",
                    z.fqdn(),
                    f[2],
                    f[3],
                    "00".repeat(32)
                ));
            }
            _ => {}
        }
        additions.push((pi, recs));
    }
    for (pi, recs) in additions {
        zones[pi].records.extend(recs);
    }
    let root = ds_of
        .iter()
        .find(|(o, _)| o == ".")
        .map(|(_, d)| d.clone())
        .context("no DS for the test root")?;
    fs::write(dir.join("root.ds"), format!("{root}\n"))?;
    Ok(())
}

// -------------------------------------------------------------------------- helpers

/// Ask Knot directly: `kdig @127.0.10.54 +short TYPE NAME`.
pub fn kdig(rtype: &str, name: &str) -> Result<String> {
    let (ip, port) = DNS_ADDR.split_once(':').expect("ip:port");
    let out = Command::new("kdig")
        .args([
            &format!("@{ip}"),
            "-p",
            port,
            "+short",
            "+time=1",
            "+retry=0",
            rtype,
            name,
        ])
        .stdin(Stdio::null())
        .output()
        .context("run kdig")?;
    if !out.status.success() {
        bail!(
            "kdig failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_in(dir: &Path, prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn user_id(name: &str) -> Result<(nix::unistd::Uid, nix::unistd::Gid)> {
    let u = nix::unistd::User::from_name(name)?.with_context(|| format!("no user {name}"))?;
    Ok((u.uid, u.gid))
}

/// The last `lines` lines of a text file ("" if unreadable).
pub fn tail_file(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
