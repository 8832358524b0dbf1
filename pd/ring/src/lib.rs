//! SPSC rings in shared memory.
#![no_std]
