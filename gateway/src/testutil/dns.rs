//! A DNS responder for unit tests: UDP on 127.0.0.1, answering from a table the
//! test can change while it runs. Names not in the table get an empty NOERROR answer
//! (NODATA); every answer has TTL 0, so changes are seen at once. Unsigned: tests of
//! DNSSEC use the signed Knot world of the system tests.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use crate::config::DnsConfig;
use crate::dns::Resolver;

#[derive(Clone)]
enum Answer {
    Records(Vec<RData>),
    ServFail,
    /// The name does not exist (stored under RecordType::ANY: every type).
    NxDomain,
}

type Table = Arc<Mutex<HashMap<(String, RecordType), Answer>>>;

/// A UDP DNS responder on 127.0.0.1. Names not in the table get an empty NOERROR
/// answer (NODATA). Every answer has TTL 0, so changes are seen at once.
pub struct TestDns {
    pub addr: SocketAddr,
    table: Table,
}

fn key(name: &str, t: RecordType) -> (String, RecordType) {
    (
        format!("{}.", name.trim_end_matches('.').to_ascii_lowercase()),
        t,
    )
}

impl TestDns {
    pub async fn start() -> TestDns {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let table: Table = Arc::default();
        let t = table.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let Some(q) = req.queries.first().cloned() else {
                    continue;
                };
                let mut resp = Message::response(req.metadata.id, OpCode::Query);
                resp.metadata.recursion_desired = true;
                resp.metadata.recursion_available = true;
                resp.add_query(q.clone());
                let answer = {
                    let table = t.lock().unwrap();
                    let name = q.name().to_ascii();
                    table
                        .get(&key(&name, q.query_type()))
                        .or_else(|| table.get(&key(&name, RecordType::ANY)))
                        .cloned()
                };
                match answer {
                    Some(Answer::Records(rdatas)) => {
                        for rd in rdatas {
                            resp.add_answer(Record::from_rdata(q.name().clone(), 0, rd));
                        }
                    }
                    Some(Answer::ServFail) => resp.metadata.response_code = ResponseCode::ServFail,
                    Some(Answer::NxDomain) => resp.metadata.response_code = ResponseCode::NXDomain,
                    None => {}
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns { addr, table }
    }

    fn set(&self, name: &str, t: RecordType, a: Answer) {
        self.table.lock().unwrap().insert(key(name, t), a);
    }

    /// TXT records at `name`, one per string (an empty slice removes them).
    pub fn txt(&self, name: &str, records: &[&str]) {
        if records.is_empty() {
            self.table
                .lock()
                .unwrap()
                .remove(&key(name, RecordType::TXT));
            return;
        }
        let rds = records
            .iter()
            .map(|r| RData::TXT(TXT::new(vec![r.to_string()])))
            .collect();
        self.set(name, RecordType::TXT, Answer::Records(rds));
    }

    pub fn a(&self, name: &str, ip: Ipv4Addr) {
        self.set(name, RecordType::A, Answer::Records(vec![RData::A(A(ip))]));
    }

    pub fn aaaa(&self, name: &str, ip: Ipv6Addr) {
        self.set(
            name,
            RecordType::AAAA,
            Answer::Records(vec![RData::AAAA(AAAA(ip))]),
        );
    }

    /// MX records at `name`: (preference, exchange) pairs; exchange "." is a null MX.
    pub fn mx(&self, name: &str, records: &[(u16, &str)]) {
        let rds = records
            .iter()
            .map(|(pref, host)| RData::MX(MX::new(*pref, Name::from_ascii(host).unwrap())))
            .collect();
        self.set(name, RecordType::MX, Answer::Records(rds));
    }

    pub fn servfail(&self, name: &str, t: RecordType) {
        self.set(name, t, Answer::ServFail);
    }

    /// NXDOMAIN for every query type at `name`.
    pub fn nxdomain(&self, name: &str) {
        self.set(name, RecordType::ANY, Answer::NxDomain);
    }

    /// A resolver asking only this responder.
    pub fn resolver(&self) -> Resolver {
        Resolver::unvalidated_for_tests(&DnsConfig {
            servers: vec![self.addr],
            timeout: Duration::from_secs(2),
            trust_anchor: None,
        })
    }
}
