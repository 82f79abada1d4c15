//! Pool member selection policies (RFC 5356, spec §5).
