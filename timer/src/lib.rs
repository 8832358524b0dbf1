//! Timer PD: timeouts for the memory server.
#![no_std]
