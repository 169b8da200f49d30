//! End-to-end load harness (work in progress).
fn main() {}
