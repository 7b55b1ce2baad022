//! tessera home (work in progress).
