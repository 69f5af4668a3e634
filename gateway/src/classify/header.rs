//! Reading the class hints out of a message's header section, and removing the
//! subject tag.
//!
//! The header section is what the SMTP server holds back before it writes a
//! message to the spool ([`crate::smtp`]): header fields with CRLF line endings,
//! possibly folded (RFC 5322 section 2.2.3). Everything but a Subject that carries
//! a tag leaves here byte for byte as it came in: the message may be signed (DKIM
//! signs the Subject too, so a tagged Subject breaks a signature over it; the tag
//! is the sender's explicit instruction to the gateway, and Postfix-style
//! "tag and strip" gateways behave the same).
//!
//! Hostile input is expected: the section can be up to the SMTP server's header
//! limit (1 MiB), contain invalid UTF-8, or encoded words (RFC 2047) that decode to
//! CR/LF. All scans here are linear in the input (times the length of the tags),
//! and a rewritten Subject never contains a CR or LF other than the CRLF of a fold
//! and the CRLF at its end, so nothing can be smuggled into a new field.

use base64::Engine;

use super::HeaderFindings;
use crate::config::{ClassifyConfig, RiskClass};

/// Scan `head`, the raw header section of a message, for the class hints of
/// [`ClassifyConfig`], and return it with the subject tag removed.
///
/// - Subject: every configured tag found (case-insensitive) is removed, and the
///   space it leaves doubled is collapsed; a folded Subject keeps its folds. When
///   the tag is inside an RFC 2047 encoded word (or split by a fold), the Subject is
///   decoded, the tag removed, and the field rewritten: as plain text when only
///   ASCII remains, else as UTF-8 `B` encoded words. A Subject that becomes empty
///   is written as `Subject: `.
/// - `Sensitivity:` (Outlook), `msip_labels` (Microsoft Purview) and
///   `TLS-Required: No` (RFC 8689 section 3) are read, never changed.
///
/// Only the first Subject and the first Sensitivity field count (RFC 5322 section
/// 3.6 allows one of each). Whatever follows an empty line (a body) is returned
/// unchanged.
pub fn scan_header(head: &[u8], cfg: &ClassifyConfig) -> (Vec<u8>, HeaderFindings) {
    let mut findings = HeaderFindings::default();
    let mut out = Vec::with_capacity(head.len());
    let (fields, rest) = split_fields(head);
    let mut subject_seen = false;
    let mut sensitivity_seen = false;
    for field in fields {
        let Some((name, value)) = split_name(field) else {
            out.extend_from_slice(field);
            continue;
        };
        if name.eq_ignore_ascii_case(b"Subject") && !subject_seen {
            subject_seen = true;
            if let Some((rewritten, tag, class)) = strip_subject_tags(name, value, cfg) {
                tracing::debug!(tag = %tag, "subject tag removed");
                findings.subject_tag = Some((tag, class));
                out.extend_from_slice(&rewritten);
                continue;
            }
        } else if name.eq_ignore_ascii_case(b"Sensitivity") && !sensitivity_seen {
            sensitivity_seen = true;
            let text = unfold_text(value);
            let found = cfg
                .sensitivity
                .iter()
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(&text));
            if let Some((_, class)) = found {
                findings.sensitivity = Some((text, *class));
            }
        } else if name.eq_ignore_ascii_case(b"msip_labels") {
            for found in purview_labels(&unfold_text(value), cfg) {
                if !findings.purview.iter().any(|(l, _)| *l == found.0) {
                    findings.purview.push(found);
                }
            }
        } else if name.eq_ignore_ascii_case(b"TLS-Required") {
            // RFC 8689 section 3: the field's only defined value is "No".
            if unfold_text(value).eq_ignore_ascii_case("No") {
                findings.tls_required_no = true;
            }
        }
        out.extend_from_slice(field);
    }
    out.extend_from_slice(rest);
    (out, findings)
}

/// The header fields of `head` (each with its continuation lines and line
/// endings) and the rest from the first empty line on.
fn split_fields(head: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < head.len() {
        let end = head[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(head.len());
        let line = &head[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            if let Some(s) = start {
                fields.push(&head[s..pos]);
            }
            start = Some(pos);
        } else if start.is_none() {
            // A continuation without a field before it: keep it as its own piece.
            start = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = start {
        fields.push(&head[s..pos]);
    }
    (fields, &head[pos..])
}

/// A field's name (without white space before the colon) and its raw value
/// (everything after the colon, folds and line ending included).
fn split_name(field: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = field.iter().position(|&b| b == b':')?;
    let name = trim_end_wsp(&field[..colon]);
    let ok = !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b));
    ok.then(|| (name, &field[colon + 1..]))
}

fn trim_end_wsp(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(0, |i| i + 1);
    &b[..n]
}

/// A field value as text: unfolded, controls turned into spaces, trimmed.
fn unfold_text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The configured tags, trimmed, without empty ones.
fn tags(cfg: &ClassifyConfig) -> Vec<(&str, RiskClass)> {
    cfg.subject_tags
        .iter()
        .map(|(t, c)| (t.trim(), *c))
        .filter(|(t, _)| !t.is_empty())
        .collect()
}

/// Length in `hay` of a case-insensitive match of `tag` at `at`, if any. ASCII
/// characters compare byte-wise; others are decoded from UTF-8 and compared
/// lower-cased (invalid UTF-8 never matches a non-ASCII character).
fn match_at(hay: &[u8], at: usize, tag: &str) -> Option<usize> {
    let mut j = at;
    for tc in tag.chars() {
        let b = *hay.get(j)?;
        if tc.is_ascii() {
            if !b.eq_ignore_ascii_case(&(tc as u8)) {
                return None;
            }
            j += 1;
            continue;
        }
        let len = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return None,
        };
        let c = std::str::from_utf8(hay.get(j..j + len)?)
            .ok()?
            .chars()
            .next()?;
        if !c.to_lowercase().eq(tc.to_lowercase()) {
            return None;
        }
        j += len;
    }
    Some(j - at)
}

/// Remove every occurrence of the tags from `value` in one pass, collapsing the
/// white space each removal leaves doubled. Returns the new value and the tag
/// with the highest class found (the first of equal ones).
fn remove_tags(value: &[u8], tags: &[(&str, RiskClass)]) -> Option<(Vec<u8>, String, RiskClass)> {
    let mut out = Vec::with_capacity(value.len());
    let mut best: Option<(&str, RiskClass)> = None;
    let mut i = 0;
    while i < value.len() {
        // The longest tag wins where tags overlap ("[secure]" / "[secure-x]").
        let hit = tags
            .iter()
            .filter_map(|&(t, c)| match_at(value, i, t).map(|n| (t, c, n)))
            .max_by_key(|&(_, _, n)| n);
        let Some((tag, class, n)) = hit else {
            out.push(value[i]);
            i += 1;
            continue;
        };
        if best.is_none_or(|(_, b)| class > b) {
            best = Some((tag, class));
        }
        i += n;
        if !out.last().is_some_and(|&b| is_wsp(b)) {
            continue;
        }
        let rest = &value[i..];
        let fold_next = rest.starts_with(b"\r\n") && rest.get(2).is_some_and(|&b| is_wsp(b));
        if rest.first().is_some_and(|&b| is_wsp(b)) {
            // "a [tag] b" -> "a b": drop the white space after the tag.
            while value.get(i).is_some_and(|&b| is_wsp(b)) {
                i += 1;
            }
        } else if fold_next || !rest.iter().any(|&b| b != b'\r' && b != b'\n') {
            // Before a fold or at the end of the field: no trailing white space.
            trim_trailing(&mut out);
        }
    }
    let (tag, class) = best?;
    Some((out, tag.to_string(), class))
}

/// Drop trailing white space, and a fold left empty by it (never leave an empty
/// line: that would end the header section).
fn trim_trailing(out: &mut Vec<u8>) {
    loop {
        while out.last().is_some_and(|&b| is_wsp(b)) {
            out.pop();
        }
        if out.ends_with(b"\r\n") {
            out.truncate(out.len() - 2);
        } else if out.ends_with(b"\n") || out.ends_with(b"\r") {
            out.pop();
        } else {
            break;
        }
    }
}

/// Only CRLF as line ending, and only where a fold or the field's end is: a bare CR
/// or LF becomes a space, a CRLF not followed by white space (which would start a
/// new field) becomes a space too, and the field ends with exactly one CRLF.
fn sanitize_field(field: Vec<u8>) -> Vec<u8> {
    let mut body = field;
    while matches!(body.last(), Some(b'\r' | b'\n')) {
        body.pop();
    }
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'\r'
            && body.get(i + 1) == Some(&b'\n')
            && body.get(i + 2).is_some_and(|&c| is_wsp(c))
        {
            out.extend_from_slice(b"\r\n");
            i += 2;
            continue;
        }
        if b == b'\r' && body.get(i + 1) == Some(&b'\n') {
            out.push(b' ');
            i += 2;
            continue;
        }
        out.push(if b == b'\r' || b == b'\n' { b' ' } else { b });
        i += 1;
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The Subject field without its tags, or `None` when it has none (the field is
/// then left exactly as it was).
fn strip_subject_tags(
    name: &[u8],
    value: &[u8],
    cfg: &ClassifyConfig,
) -> Option<(Vec<u8>, String, RiskClass)> {
    let tags = tags(cfg);
    if tags.is_empty() {
        return None;
    }
    // The common case: the tag is written as is. Keep the field's folds.
    if let Some((mut v, tag, class)) = remove_tags(value, &tags) {
        if !v.iter().any(|&b| !is_wsp(b) && b != b'\r' && b != b'\n') {
            // Nothing left: "Subject: ".
            v = b" ".to_vec();
        } else if !v.first().is_some_and(|&b| is_wsp(b) || b == b'\r') {
            // "Subject:[tag] x" left the value glued to the colon.
            v.insert(0, b' ');
        }
        let mut field = name.to_vec();
        field.push(b':');
        field.extend_from_slice(&v);
        return Some((sanitize_field(field), tag, class));
    }
    // The tag is inside an encoded word, or split by a fold: decode the Subject.
    let decoded = decode_subject(value)?;
    let (v, tag, class) = remove_tags(decoded.as_bytes(), &tags)?;
    // `decoded` was valid UTF-8 and only whole characters were removed.
    let text = String::from_utf8_lossy(&v);
    let text = text
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut field = name.to_vec();
    field.push(b':');
    field.extend_from_slice(&encode_unstructured(&text, name.len() + 1));
    Some((sanitize_field(field), tag, class))
}

/// The Subject's text as a reader sees it (unfolded, encoded words decoded), with
/// every control character (including a CR or LF smuggled in an encoded word) as
/// a space.
fn decode_subject(value: &[u8]) -> Option<String> {
    let mut raw = b"Subject:".to_vec();
    raw.extend_from_slice(value);
    if !raw.ends_with(b"\n") {
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let msg = mail_parser::MessageParser::default().parse_headers(&raw)?;
    let s = msg.subject()?;
    Some(
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    )
}

/// An unstructured field value (with its leading space, without the final CRLF):
/// plain words folded near 78 columns when the text is ASCII and cannot be
/// mistaken for an encoded word, else UTF-8 `B` encoded words (RFC 2047 section 2:
/// each at most 75 characters) on folded lines. `used` is the length of
/// `Name:` on the first line.
fn encode_unstructured(text: &str, used: usize) -> Vec<u8> {
    if text.is_empty() {
        return b" ".to_vec();
    }
    let mut out = String::new();
    let mut line = used;
    let mut push = |out: &mut String, word: &str| {
        if line + 1 + word.len() > 78 && line > used {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(word);
        line += 1 + word.len();
    };
    if text.is_ascii() && !text.contains("=?") {
        for word in text.split(' ') {
            push(&mut out, word);
        }
        return out.into_bytes();
    }
    // 39 bytes of text are 52 base64 characters: "=?UTF-8?B?" + 52 + "?=" = 64,
    // so even after "Subject: " a line stays within 78 columns.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 39 {
            push(
                &mut out,
                &format!("=?UTF-8?B?{}?=", b64.encode(chunk.as_bytes())),
            );
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        push(
            &mut out,
            &format!("=?UTF-8?B?{}?=", b64.encode(chunk.as_bytes())),
        );
    }
    out.into_bytes()
}

/// The enabled Purview labels in an `msip_labels` value that have a class.
///
/// The value is a list of `MSIP_Label_<GUID>_<Property>=<value>` items separated by
/// `;`. A label applies only with `_Enabled=true` (a label can be listed as
/// removed). It is matched by `_Name` or by its GUID (with or without braces).
fn purview_labels(value: &str, cfg: &ClassifyConfig) -> Vec<(String, RiskClass)> {
    // (guid, enabled, name), in order of first appearance.
    let mut labels: Vec<(String, bool, Option<String>)> = Vec::new();
    for item in value.split(';') {
        let Some((key, val)) = item.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let Some(rest) = key
            .get(..11)
            .filter(|p| p.eq_ignore_ascii_case("MSIP_Label_"))
            .and_then(|_| key.get(11..))
        else {
            continue;
        };
        let Some((guid, prop)) = rest.rsplit_once('_') else {
            continue;
        };
        let guid = guid
            .trim_matches(|c| c == '{' || c == '}')
            .to_ascii_lowercase();
        if guid.is_empty() {
            continue;
        }
        let idx = match labels.iter().position(|(g, _, _)| *g == guid) {
            Some(i) => i,
            None => {
                labels.push((guid, false, None));
                labels.len() - 1
            }
        };
        let val = val.trim();
        if prop.eq_ignore_ascii_case("Enabled") {
            labels[idx].1 = val.eq_ignore_ascii_case("true");
        } else if prop.eq_ignore_ascii_case("Name") && !val.is_empty() {
            labels[idx].2 = Some(val.to_string());
        }
    }
    let lower = |s: &str| {
        s.trim()
            .trim_matches(|c| c == '{' || c == '}')
            .to_lowercase()
    };
    labels
        .into_iter()
        .filter(|(_, enabled, _)| *enabled)
        .filter_map(|(guid, _, name)| {
            let by_name = name.as_deref().and_then(|n| {
                let n = lower(n);
                cfg.purview_labels.iter().find(|(k, _)| lower(k) == n)
            });
            let by_guid = || cfg.purview_labels.iter().find(|(k, _)| lower(k) == guid);
            let (_, class) = by_name.or_else(by_guid)?;
            Some((name.unwrap_or(guid), *class))
        })
        .collect()
}
