//! Verification harness (in progress).
