//! Clients of the memory server: client library and guest workload PD.
#![no_std]
