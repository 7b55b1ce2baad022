//! tessera crypto (work in progress).
