//! Host-side tools as a library: the host platform launcher ([`host`]), for
//! `tools run`, `tools demo` and tests.

pub mod host;
