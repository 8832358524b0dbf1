//! Messages between clients, the memory server and the balloon driver.
#![no_std]
