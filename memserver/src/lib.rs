//! Memory server PD: buddy allocator with Linux-style free page reporting.
#![no_std]
