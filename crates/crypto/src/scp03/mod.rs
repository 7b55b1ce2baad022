//! GlobalPlatform SCP03 (work in progress).
