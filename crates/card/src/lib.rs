//! tessera card (work in progress).
