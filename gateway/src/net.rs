//! Small pieces shared by the two HTTPS clients: the MTA-STS policy fetch
//! ([`crate::mtasts`]) and the TLS-RPT report post ([`crate::tlsrpt`]).

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

/// Aborts a spawned task (an HTTP connection driver) when dropped, so a request
/// that ends early, by error or timeout, never leaves its connection running.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connect to the first of `addrs` that answers on `port`; the last error if none.
pub(crate) async fn connect_any(addrs: &[IpAddr], port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for ip in addrs {
        match TcpStream::connect(SocketAddr::new(*ip, port)).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}
