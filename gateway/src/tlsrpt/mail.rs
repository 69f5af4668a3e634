//! Reports by mail (RFC 8460 section 5.3, standards.md F3): a
//! `multipart/report; report-type="tlsrpt"` message with a short text/plain part
//! and the gzipped report as an `application/tlsrpt+gzip` attachment (base64),
//! named `<submitter>!<policy-domain>!<begin>!<end>!<unique>.json.gz` (section
//! 5.1), and the `TLS-Report-Domain` / `TLS-Report-Submitter` header fields.
//!
//! Written by hand like the DSNs (`crate::bounce`): every value that goes into a
//! header is checked or cleaned first (the policy domain and the submitter are
//! host names, the addresses were validated when the TXT record was parsed, the
//! organization name is the admin's and is reduced to printable ASCII).

use base64::Engine;

use super::https::GZIP_MEDIA_TYPE;

/// What one report mail says.
#[derive(Debug, Clone)]
pub struct ReportMail<'a> {
    /// The envelope sender and `From:` (the report's contact address).
    pub from: &'a str,
    /// The `mailto:` address of the policy.
    pub to: &'a str,
    pub policy_domain: &'a str,
    /// The reporting domain (section 5.3: `TLS-Report-Submitter`).
    pub submitter: &'a str,
    pub organization: &'a str,
    /// `left@right`, shown as `<left@right>` in the subject.
    pub report_id: &'a str,
    pub filename: &'a str,
    /// Unix seconds, for `Date:`.
    pub date: u64,
    /// The gzipped JSON report.
    pub gzip: &'a [u8],
}

/// The attachment's file name (section 5.1):
/// `filename = sender "!" policy-domain "!" begin-timestamp "!" end-timestamp
/// [ "!" unique-id ] "." extension`.
pub fn report_filename(
    submitter: &str,
    domain: &str,
    begin: u64,
    end: u64,
    unique: &str,
) -> String {
    format!("{submitter}!{domain}!{begin}!{end}!{unique}.json.gz")
}

/// Printable ASCII only, runs of white space collapsed, at most 200 characters:
/// safe inside a header field and a quoted string.
fn clean(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() => c,
            _ => ' ',
        })
        .collect();
    let mut out = mapped.split_whitespace().collect::<Vec<_>>().join(" ");
    out.truncate(200);
    out
}

/// The message, CRLF line ends, 7-bit.
pub fn build(m: &ReportMail<'_>) -> Vec<u8> {
    let boundary = format!(
        "tlsrpt-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let org = clean(m.organization);
    let mut out = String::with_capacity(m.gzip.len() * 4 / 3 + 2048);
    let mut h = |name: &str, value: &str| {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    };
    h("From", &format!("<{}>", m.from));
    h("To", &format!("<{}>", m.to));
    h("Date", &crate::bounce::rfc5322_date(m.date));
    // Section 5.3: "Report Domain: <domain> Submitter: <domain> Report-ID: <id>",
    // folded at the spaces like the RFC's example.
    h(
        "Subject",
        &format!(
            "Report Domain: {}\r\n Submitter: {}\r\n Report-ID: <{}>",
            m.policy_domain, m.submitter, m.report_id
        ),
    );
    h(
        "Message-ID",
        &format!("<{:016x}.{}>", rand::random::<u64>(), m.report_id),
    );
    h("TLS-Report-Domain", m.policy_domain);
    h("TLS-Report-Submitter", m.submitter);
    // RFC 3834: no vacation replies or other automatic answers to a report.
    h("Auto-Submitted", "auto-generated");
    h("MIME-Version", "1.0");
    h(
        "Content-Type",
        &format!("multipart/report; report-type=\"tlsrpt\";\r\n boundary=\"{boundary}\""),
    );
    out.push_str("\r\nThis is a multipart message in MIME format.\r\n\r\n");

    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str("Content-Type: text/plain; charset=\"us-ascii\"\r\n");
    out.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
    out.push_str(&format!(
        "This is an aggregate TLS report from {} ({}) for {}.\r\n\
         The report (RFC 8460) is attached as {}.\r\n\r\n",
        if org.is_empty() { m.submitter } else { &org },
        m.submitter,
        m.policy_domain,
        GZIP_MEDIA_TYPE
    ));

    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str(&format!("Content-Type: {GZIP_MEDIA_TYPE}\r\n"));
    out.push_str("Content-Transfer-Encoding: base64\r\n");
    out.push_str(&format!(
        "Content-Disposition: attachment;\r\n filename=\"{}\"\r\n\r\n",
        m.filename
    ));
    let b64 = base64::engine::general_purpose::STANDARD.encode(m.gzip);
    // RFC 2045 section 6.8: lines of at most 76 characters.
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out.push_str(&format!("\r\n--{boundary}--\r\n"));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    fn sample(gzip: &[u8]) -> Vec<u8> {
        build(&ReportMail {
            from: "postmaster@relay.example",
            to: "tlsrpt@recipient.example",
            policy_domain: "recipient.example",
            submitter: "relay.example",
            organization: "Example \"Org\"\r\nBcc: x@y",
            report_id: "2025-02-13.abc@relay.example",
            filename: &report_filename("relay.example", "recipient.example", 1, 2, "abc"),
            date: 1_739_440_800,
            gzip,
        })
    }

    #[test]
    fn f3_report_mail_is_multipart_report_with_gzip_attachment() {
        let gz = super::super::report::gzip_json(&super::super::report::Report {
            organization_name: "o".into(),
            date_range: super::super::report::DateRange {
                start_datetime: "a".into(),
                end_datetime: "b".into(),
            },
            contact_info: "c".into(),
            report_id: "d".into(),
            policies: vec![],
        })
        .unwrap();
        let raw = sample(&gz);
        let text = String::from_utf8(raw.clone()).unwrap();
        // CRLF everywhere, no bare LF.
        assert!(!text.replace("\r\n", "").contains('\n'));
        assert!(text.lines().all(|l| l.len() <= 998));
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let ct = msg.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        assert_eq!(
            msg.subject(),
            Some("Report Domain: recipient.example Submitter: relay.example Report-ID: <2025-02-13.abc@relay.example>")
        );
        assert_eq!(
            msg.header_raw("TLS-Report-Domain").map(str::trim),
            Some("recipient.example")
        );
        assert_eq!(
            msg.header_raw("TLS-Report-Submitter").map(str::trim),
            Some("relay.example")
        );
        assert!(
            msg.header_raw("Bcc").is_none(),
            "header injection via the organization name"
        );
        assert_eq!(msg.attachment_count(), 1);
        let att = msg.attachment(0).unwrap();
        let act = att.content_type().unwrap();
        assert_eq!(
            (act.ctype(), act.subtype()),
            ("application", Some("tlsrpt+gzip"))
        );
        assert_eq!(
            att.attachment_name(),
            Some("relay.example!recipient.example!1!2!abc.json.gz")
        );
        assert_eq!(att.contents(), &gz[..]);
        let text_part = msg.body_text(0).unwrap();
        assert!(text_part.contains("aggregate TLS report from Example 'Org' Bcc: x@y"));
    }
}
