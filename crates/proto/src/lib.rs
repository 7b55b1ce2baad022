//! tessera proto (work in progress).
