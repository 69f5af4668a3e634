//! What the recipient can see of how a message left (issue 4, `[evidence]`): the
//! optional `X-Qrelay-Transport` header and the subject mark, which only a
//! `verified` delivery gets. Both are off by default.

use std::time::Duration;

use qrelay_tests::{Mx, Relay};

const ARRIVE: Duration = Duration::from_secs(60);

#[test]
fn a5_transport_header_and_subject_mark_only_for_verified() {
    let relay =
        Relay::start("[evidence]\ntransport_header = true\nsubject_mark = \"[verified]\"\n")
            .unwrap();
    // mx-ca: test-CA certificate on a DNSSEC-secure MX: verified (PKIX).
    let m = relay.deliver_token("mark-ok", "ca.example.test", Mx::Ca, ARRIVE);
    let header = m.header("X-Qrelay-Transport").expect("transport header");
    assert!(header.starts_with("verified pkix TLSv1."), "{header}");
    assert!(header.ends_with("mx=mx-ca.example.test"), "{header}");
    let subject = m.header("Subject").unwrap_or_default();
    assert!(subject.starts_with("[verified] mark-ok-"), "{subject}");

    // mx-self: self-signed, encrypted only: the header says so, no mark.
    let m = relay.deliver_token("mark-enc", "self.example.test", Mx::SelfSigned, ARRIVE);
    let header = m.header("X-Qrelay-Transport").expect("transport header");
    assert!(header.starts_with("encrypted none TLSv1."), "{header}");
    let subject = m.header("Subject").unwrap_or_default();
    assert!(subject.starts_with("mark-enc-"), "{subject}");
}

#[test]
fn a5_no_transport_header_or_mark_by_default() {
    let relay = Relay::start("").unwrap();
    let m = relay.deliver_token("mark-off", "ca.example.test", Mx::Ca, ARRIVE);
    assert!(m.header("X-Qrelay-Transport").is_none());
    assert!(m
        .header("Subject")
        .unwrap_or_default()
        .starts_with("mark-off-"));
}
