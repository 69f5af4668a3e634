//! The peer's public key, read from the certificate's SubjectPublicKeyInfo (RFC 5280
//! 4.1.2.7): algorithm and size, for the key-size rules of the TLS profiles
//! (TR-02102-2 / standards.md C6) and for the evidence ("record the peer key size").
//!
//! The SPKI comes from a certificate webpki has already parsed; the few DER elements
//! needed here (two SEQUENCEs, an OID, a BIT STRING and for RSA the modulus INTEGER)
//! are read by a small bounds-checked reader. Anything malformed yields `None`, never
//! a panic: this is data from the network.

use std::fmt;

use rustls::pki_types::CertificateDer;

/// What kind of public key a certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// rsaEncryption or RSASSA-PSS (RFC 8017, RFC 4055).
    Rsa,
    /// id-ecPublicKey (RFC 5480) on a named curve, e.g. "secp256r1".
    Ec { curve: String },
    /// Ed25519 / Ed448 (RFC 8410).
    EdDsa { name: &'static str },
    /// Any other algorithm, by its dotted OID.
    Other { oid: String },
}

/// A peer's public key: kind and size in bits (the RSA modulus length, the EC field
/// size). `bits` is `None` only for algorithms this reader does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey {
    pub kind: KeyKind,
    pub bits: Option<u32>,
}

impl PeerKey {
    /// Read the key of a certificate (the end-entity certificate of a handshake).
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Option<PeerKey> {
        let ee = webpki::EndEntityCert::try_from(cert).ok()?;
        PeerKey::from_spki(ee.subject_public_key_info().as_ref())
    }

    /// Read a DER SubjectPublicKeyInfo (with its outer SEQUENCE).
    pub fn from_spki(spki: &[u8]) -> Option<PeerKey> {
        let (spki, _) = expect(spki, TAG_SEQUENCE)?;
        let (alg, rest) = expect(spki, TAG_SEQUENCE)?;
        let (bits, _) = expect(rest, TAG_BIT_STRING)?;
        // The first octet of a BIT STRING counts unused bits; a key is whole octets.
        let (&unused, key) = bits.split_first()?;
        if unused != 0 {
            return None;
        }
        let (oid, params) = expect(alg, TAG_OID)?;
        match oid {
            OID_RSA_ENCRYPTION | OID_RSASSA_PSS => {
                let (rsa, _) = expect(key, TAG_SEQUENCE)?;
                let (modulus, _) = expect(rsa, TAG_INTEGER)?;
                Some(PeerKey {
                    kind: KeyKind::Rsa,
                    bits: Some(integer_bits(modulus)?),
                })
            }
            OID_EC_PUBLIC_KEY => {
                let curve_oid = expect(params, TAG_OID).map(|(c, _)| c);
                let known = curve_oid.and_then(|c| {
                    NAMED_CURVES
                        .iter()
                        .find(|(oid, _, _)| *oid == c)
                        .map(|(_, name, bits)| ((*name).to_string(), *bits))
                });
                let (curve, bits) = match known {
                    Some(k) => k,
                    // An unnamed or unknown curve: the size from the point encoding
                    // (SEC 1 2.3.3: 04 || X || Y, or 02/03 || X).
                    None => {
                        let name = curve_oid
                            .map(|c| format!("curve {}", dotted(c)))
                            .unwrap_or_else(|| "explicit curve".into());
                        let field = match key.first() {
                            Some(4) => (key.len().saturating_sub(1)) / 2,
                            Some(2 | 3) => key.len().saturating_sub(1),
                            _ => return None,
                        };
                        (name, u32::try_from(field * 8).ok()?)
                    }
                };
                Some(PeerKey {
                    kind: KeyKind::Ec { curve },
                    bits: Some(bits),
                })
            }
            OID_ED25519 => Some(PeerKey {
                kind: KeyKind::EdDsa { name: "Ed25519" },
                bits: Some(256),
            }),
            OID_ED448 => Some(PeerKey {
                kind: KeyKind::EdDsa { name: "Ed448" },
                bits: Some(448),
            }),
            other => Some(PeerKey {
                kind: KeyKind::Other { oid: dotted(other) },
                bits: None,
            }),
        }
    }

    /// The type as recorded in the evidence: "RSA", "EC secp384r1", "Ed25519",
    /// "OID 1.2.3.4".
    pub fn type_name(&self) -> String {
        match &self.kind {
            KeyKind::Rsa => "RSA".into(),
            KeyKind::Ec { curve } => format!("EC {curve}"),
            KeyKind::EdDsa { name } => (*name).into(),
            KeyKind::Other { oid } => format!("OID {oid}"),
        }
    }

    /// With an article, for sentences: "an RSA-2048 key", "an EC secp256r1
    /// (256-bit) key", "an Ed25519 key", "a key of unknown type (OID 1.2.3)".
    pub fn phrase(&self) -> String {
        match (&self.kind, self.bits) {
            (KeyKind::Other { oid }, _) => format!("a key of unknown type (OID {oid})"),
            _ => format!("an {self} key"),
        }
    }
}

impl fmt::Display for PeerKey {
    /// "RSA-2048", "EC secp256r1 (256-bit)", "Ed25519", "OID 1.2.3".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, self.bits) {
            (KeyKind::Rsa, Some(b)) => write!(f, "RSA-{b}"),
            (KeyKind::Ec { curve }, Some(b)) => write!(f, "EC {curve} ({b}-bit)"),
            _ => f.write_str(&self.type_name()),
        }
    }
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// 1.2.840.113549.1.1.1
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.113549.1.1.10
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
/// 1.2.840.10045.2.1
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.3.101.112
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// 1.3.101.113
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];

/// Named curves (RFC 5480 2.1.1.1, RFC 5639): OID, name, field size in bits.
const NAMED_CURVES: &[(&[u8], &str, u32)] = &[
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        "secp256r1",
        256,
    ),
    (&[0x2b, 0x81, 0x04, 0x00, 0x22], "secp384r1", 384),
    (&[0x2b, 0x81, 0x04, 0x00, 0x23], "secp521r1", 521),
    (
        &[0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x07],
        "brainpoolP256r1",
        256,
    ),
    (
        &[0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x0b],
        "brainpoolP384r1",
        384,
    ),
    (
        &[0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x0d],
        "brainpoolP512r1",
        512,
    ),
];

/// One DER element with the expected tag: (contents, what follows it).
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1..=4 length octets (0x80 alone would be BER's indefinite form).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (octets, rest) = rest.split_at(n);
        let len = octets
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// The bit length of a non-negative DER INTEGER (leading zero octets ignored).
fn integer_bits(int: &[u8]) -> Option<u32> {
    let start = int.iter().position(|&b| b != 0)?;
    let significant = &int[start..];
    let top = significant.first()?;
    let bits = (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize);
    u32::try_from(bits).ok()
}

/// An OID's contents in dotted form (X.690 8.19), for showing unknown algorithms.
fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
        if acc > u64::MAX >> 8 {
            return "(malformed)".into();
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spki_of(key: &rcgen::KeyPair) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(key)
    }

    #[test]
    fn c6_ec_keys_and_their_curves() {
        for (alg, curve, bits) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "secp256r1", 256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "secp384r1", 384),
            (&rcgen::PKCS_ECDSA_P521_SHA512, "secp521r1", 521),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let k = PeerKey::from_spki(&spki_of(&key)).expect("parsed");
            assert_eq!(
                k.kind,
                KeyKind::Ec {
                    curve: curve.into()
                }
            );
            assert_eq!(k.bits, Some(bits));
            assert_eq!(k.type_name(), format!("EC {curve}"));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let k = PeerKey::from_spki(&spki_of(&key)).unwrap();
        assert_eq!(k.to_string(), "Ed25519");
        assert_eq!(k.bits, Some(256));
    }

    #[test]
    fn c6_rsa_key_size_is_the_modulus_length() {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let k = PeerKey::from_spki(&spki_of(&key)).unwrap();
        assert_eq!(k.kind, KeyKind::Rsa);
        assert_eq!(k.bits, Some(2048));
        assert_eq!(k.to_string(), "RSA-2048");
        assert_eq!(k.phrase(), "an RSA-2048 key");
    }

    #[test]
    fn malformed_input_never_panics() {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = spki_of(&key);
        assert!(PeerKey::from_spki(&spki).is_some());
        for n in 0..spki.len() {
            assert_eq!(PeerKey::from_spki(&spki[..n]), None, "prefix {n}");
        }
        for i in 0..spki.len() {
            let mut bad = spki.clone();
            bad[i] ^= 0xff;
            let _ = PeerKey::from_spki(&bad);
        }
        assert_eq!(
            PeerKey::from_spki(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(PeerKey::from_spki(&[0x30, 0x80]), None);
    }

    #[test]
    fn unknown_algorithms_are_named_by_oid() {
        // SEQUENCE { SEQUENCE { OID 1.2.3.4 }, BIT STRING { 00 01 } }
        let spki = [
            0x30, 0x0b, 0x30, 0x05, 0x06, 0x03, 0x2a, 0x03, 0x04, 0x03, 0x02, 0x00, 0x01,
        ];
        let k = PeerKey::from_spki(&spki).unwrap();
        assert_eq!(
            k.kind,
            KeyKind::Other {
                oid: "1.2.3.4".into()
            }
        );
        assert_eq!(k.bits, None);
        assert_eq!(k.phrase(), "a key of unknown type (OID 1.2.3.4)");
        assert_eq!(dotted(OID_RSA_ENCRYPTION), "1.2.840.113549.1.1.1");
    }
}
