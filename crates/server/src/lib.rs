//! tessera server (work in progress).
