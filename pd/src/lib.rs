//! The Microkit-shaped PD runtime: handler API, Microkit, host and bare backends, shared-memory rings.
#![no_std]
