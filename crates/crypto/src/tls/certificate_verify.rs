//! The content of a TLS client CertificateVerify (RFC 8446 section 4.4.3; RFC 5246 section 7.4.8).
