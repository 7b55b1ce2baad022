//! TLS record protection with handed-over traffic keys (RFC 8446 section 5; RFC 5288).
