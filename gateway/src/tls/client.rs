//! Outbound TLS: client configurations per transport level and the facts of a session.
