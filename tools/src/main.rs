//! Host-side tools.

fn main() {}
