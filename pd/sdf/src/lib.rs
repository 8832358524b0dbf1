//! Parse, validate and generate code from a Microkit system description (system.xml).
//!
//! - [`System::parse`]: the Microkit 2.3 SDF subset this project uses, with
//!   line numbers ([`model`]).
//! - [`check::check`]: the validation behind `tools check`.
//! - [`codegen::generate`] and [`build`]: the per-PD configuration module a
//!   PD crate's `build.rs` generates (channel ids, region names, setvar symbols).

pub mod build;
pub mod check;
pub mod codegen;
pub mod guests;
pub mod model;
pub mod stamp;

pub use check::{Diagnostic, Severity, check};
pub use model::{ParseError, System};
