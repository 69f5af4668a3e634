//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, checked
//! against `smtp.users` (argon2 PHC strings).
//!
//! Offered and accepted only over TLS, so the cleartext mechanisms never cross the
//! wire in the clear. Verification goes through the argon2 crate, whose hash
//! comparison is constant-time; an unknown user name is checked against a dummy
//! hash so it costs the same as a wrong password. Passwords and SASL payloads are
//! never logged.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;

use crate::config::SmtpUser;

/// Hash a password for `smtp.users[].password_hash` (argon2id, the crate's default
/// parameters, a random 128-bit salt), as a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt_bytes: [u8; 16] = rand::random();
    // encode_b64 only fails for salts outside 4..=64 bytes; 16 is fine.
    let salt = SaltString::encode_b64(&salt_bytes).expect("a 16-byte salt is valid");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any realistic password")
        .to_string()
}

/// A hash nobody's password matches, for unknown user names.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("qrelay: no such user"))
}

/// Check a user name and password against the configured users. Blocking (argon2
/// takes tens of milliseconds); call it from `spawn_blocking`.
pub(crate) fn verify(users: &[SmtpUser], name: &str, password: &str) -> bool {
    let user = users.iter().find(|u| u.name == name);
    let phc = user
        .map(|u| u.password_hash.as_str())
        .unwrap_or(dummy_hash());
    let ok = match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    };
    ok && user.is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SaslError {
    /// The response is not base64 (RFC 4954 section 4: 501).
    #[error("501 5.5.2 Cannot decode the authentication response")]
    Decode,
    /// The decoded credentials are not in the mechanism's format.
    #[error("535 5.7.8 Authentication credentials invalid")]
    Malformed,
}

/// Decode one SASL response line; `=` is the empty response (RFC 4954 section 4).
pub(crate) fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    if line == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| SaslError::Decode)
}

/// Credentials from a PLAIN response: `[authzid] NUL authcid NUL passwd`. An
/// authorization identity other than the user itself is refused.
pub(crate) fn parse_plain(decoded: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let authc = std::str::from_utf8(authc).map_err(|_| SaslError::Malformed)?;
    let pass = std::str::from_utf8(pass).map_err(|_| SaslError::Malformed)?;
    if authc.is_empty() || (!authz.is_empty() && authz != authc.as_bytes()) {
        return Err(SaslError::Malformed);
    }
    Ok((authc.to_string(), pass.to_string()))
}

/// A LOGIN response (user name or password) as text.
pub(crate) fn login_text(decoded: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(decoded).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_argon2id_phc_and_verifies() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$argon2id$"), "{h}");
        let users = vec![SmtpUser {
            name: "scanner".into(),
            password_hash: h,
        }];
        assert!(verify(&users, "scanner", "s3cret"));
        assert!(!verify(&users, "scanner", "wrong"));
        assert!(!verify(&users, "nobody", "s3cret"));
        assert!(!verify(&users, "nobody", "qrelay: no such user"));
    }

    #[test]
    fn plain_credentials_parse() {
        assert_eq!(
            parse_plain(b"\0u\0p").unwrap(),
            ("u".to_string(), "p".to_string())
        );
        assert_eq!(parse_plain(b"u\0u\0p").unwrap().0, "u");
        assert!(parse_plain(b"admin\0u\0p").is_err());
        assert!(parse_plain(b"u\0p").is_err());
        assert!(parse_plain(b"\0\0p").is_err());
        assert_eq!(decode_response("=").unwrap(), b"");
        assert_eq!(decode_response("!!"), Err(SaslError::Decode));
    }
}
