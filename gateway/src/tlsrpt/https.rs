//! Reports by HTTPS POST (RFC 8460 section 5.4): `Content-Type:
//! application/tlsrpt+gzip`, the gzipped JSON as the body; any 2xx answer means
//! the report was taken.
//!
//! Like the MTA-STS fetch (`crate::mtasts` `fetch`), the connection is ours: the
//! endpoint's addresses come from our resolver, TCP from tokio, TLS from rustls
//! with PKIX verification (webpki-roots + `[tls] ca_file`) for the URL's host name,
//! and hyper's low-level HTTP/1.1 client on top. Redirects are not followed
//! (a 3xx is a failure and the report is retried later).

use crate::net::{connect_any, AbortOnDrop};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use tokio_rustls::TlsConnector;

use crate::dns::Resolver;

/// The media type of a gzipped report (RFC 8460 section 6.4).
pub const GZIP_MEDIA_TYPE: &str = "application/tlsrpt+gzip";

/// How much of an error answer's body is read (for the log).
const MAX_ANSWER: usize = 4096;

/// An `https:` report URI, parsed far enough to connect and send a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpsUrl {
    /// Lower-case host name, or an IP address (IPv6 without brackets).
    pub host: String,
    /// The explicit port of the URL, if any.
    pub port: Option<u16>,
    /// Path and query, starting with `/` (the fragment removed).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid https URI {uri:?}: {reason}")]
pub struct UrlError {
    uri: String,
    reason: &'static str,
}

impl HttpsUrl {
    /// Parse `https://host[:port][/path][?query][#fragment]`. User information is
    /// refused (nothing sensible to do with it, and a classic way to disguise a
    /// host); the path must be printable ASCII (RFC 3986: percent-encoded).
    pub fn parse(uri: &str) -> Result<HttpsUrl, UrlError> {
        let err = |reason| UrlError {
            uri: uri.to_string(),
            reason,
        };
        let rest = uri
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("https://"))
            .map(|_| &uri[8..])
            .ok_or_else(|| err("not an https:// URI"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(err("user information is not accepted"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in host"))?;
            let ip: std::net::Ipv6Addr = addr.parse().map_err(|_| err("invalid IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| err("junk after ]"))?),
            };
            (ip.to_string(), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (authority.to_ascii_lowercase(), None),
            }
        };
        let host_ok = !host.is_empty()
            && (host.parse::<IpAddr>().is_ok()
                || host.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !host_ok {
            return Err(err("invalid host"));
        }
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| err("invalid port"))?,
            ),
        };
        let tail = tail.split('#').next().unwrap_or("");
        let path = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err("the path must be printable ASCII"));
        }
        Ok(HttpsUrl {
            host: host.trim_end_matches('.').to_string(),
            port,
            path,
        })
    }

    /// The port to connect to: the URL's own, else `default` (`[tls_rpt]
    /// https_port`, 443 outside tests).
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }
}

impl std::fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path)
    }
}

/// Posts reports; one connection per report, no reuse.
#[derive(Clone)]
pub(crate) struct Poster {
    resolver: Resolver,
    tls: TlsConnector,
    default_port: u16,
    timeout: Duration,
}

impl Poster {
    pub(crate) fn new(
        resolver: Resolver,
        roots: Arc<RootCertStore>,
        default_port: u16,
        timeout: Duration,
    ) -> Result<Poster, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.resumption = Resumption::disabled();
        cfg.enable_early_data = false;
        Ok(Poster {
            resolver,
            tls: TlsConnector::from(Arc::new(cfg)),
            default_port,
            timeout,
        })
    }

    /// POST `body` (a gzipped report) to `url`; `Ok` on a 2xx answer. The whole
    /// exchange is bounded by the timeout.
    pub(crate) async fn post(&self, url: &HttpsUrl, body: Vec<u8>) -> Result<u16, String> {
        match tokio::time::timeout(self.timeout, self.post_inner(url, body)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{url}: no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    async fn post_inner(&self, url: &HttpsUrl, body: Vec<u8>) -> Result<u16, String> {
        let port = url.port_or(self.default_port);
        let addrs = match url.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let found = self.resolver.resolve_addrs(&url.host).await;
                if found.addrs.is_empty() {
                    return Err(match found.temp_error {
                        Some(e) => format!("address lookup for {} failed: {e}", url.host),
                        None => format!("{} has no address", url.host),
                    });
                }
                found.addrs
            }
        };
        let tcp = connect_any(&addrs, port)
            .await
            .map_err(|e| format!("cannot connect to {} port {port}: {e}", url.host))?;
        let server_name = ServerName::try_from(url.host.clone())
            .map_err(|e| format!("invalid host name {}: {e}", url.host))?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", url.host))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {} failed: {e}", url.host))?;
        let driver = AbortOnDrop(tokio::spawn(conn));
        let len = body.len();
        let req = Request::post(url.path.as_str())
            .header(HOST, url.authority())
            .header(USER_AGENT, concat!("qrelay/", env!("CARGO_PKG_VERSION")))
            .header(CONTENT_TYPE, GZIP_MEDIA_TYPE)
            .header(CONTENT_LENGTH, len)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP request to {url} failed: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            drop(driver);
            return Ok(status.as_u16());
        }
        // A few bytes of the answer help the admin; more is not read.
        let text = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        drop(driver);
        let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
        Err(format!("{url} answered {status} {text}")
            .trim_end()
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f3_https_urls_parse() {
        let u = HttpsUrl::parse("https://TLSRPT.Example.test/report").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("tlsrpt.example.test", None, "/report")
        );
        assert_eq!(u.port_or(8443), 8443);
        assert_eq!(u.to_string(), "https://tlsrpt.example.test/report");

        let u = HttpsUrl::parse("HTTPS://r.example:8443?x=1#frag").unwrap();
        assert_eq!((u.port, u.path.as_str()), (Some(8443), "/?x=1"));
        assert_eq!(u.port_or(443), 8443);
        assert_eq!(u.authority(), "r.example:8443");

        let u = HttpsUrl::parse("https://[2001:db8::1]:444/r").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", Some(444)));
        assert_eq!(u.authority(), "[2001:db8::1]:444");

        assert_eq!(HttpsUrl::parse("https://r.example").unwrap().path, "/");
    }

    #[test]
    fn f3_bad_https_urls_are_refused() {
        for bad in [
            "http://r.example/",
            "https://",
            "https://user:pw@r.example/",
            "https://r.example:0/",
            "https://r.example:99999/",
            "https://r.example:x/",
            "https://r..example/",
            "https://r_x.example/",
            "https://r.example/a b",
            "https://[::1/",
        ] {
            assert!(HttpsUrl::parse(bad).is_err(), "accepted {bad}");
        }
    }
}
