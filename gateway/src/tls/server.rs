//! Inbound STARTTLS: the server certificate (configured or generated on first start).
