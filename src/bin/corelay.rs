//! The corelay gateway binary.
fn main() {}
