//! The virtio-balloon driver PD and a device model for tests and the host platform.
#![no_std]
