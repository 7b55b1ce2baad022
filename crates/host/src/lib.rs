//! tessera host (work in progress).
