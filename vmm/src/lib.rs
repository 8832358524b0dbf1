//! The VMM's core: everything that decides, nothing that invokes seL4, so
//! all of it runs in host tests. The PD (`main.rs`) feeds it the vCPU's
//! faults and does what it answers.
//!
//! - [`trap`]: a data abort's syndrome (ESR_EL2) decoded into the access
//!   the guest made, for emulating it.
//! - [`psci`]: PSCI over SMC (the DTB says `method = "smc"`).
//! - [`mmio`]: the table of emulated windows, and the answer to an access
//!   nothing emulates (the VM stops, with one line).
//! - [`gic`]: the GICv2 distributor the guest programs.
//! - [`idle`]: how long a WFI lets the vCPU sleep.
//! - [`nested`]: the VM balloon's report chains as messages to the
//!   memserver, and its answers back to chains.
//! - [`vm_balloon`]: its inflate, deflate and stats chains as messages to
//!   the memserver; deflates held until the outer host let go.
#![cfg_attr(not(test), no_std)]

pub mod gic;
pub mod idle;
pub mod mmio;
pub mod nested;
pub mod psci;
pub mod trap;
pub mod vm_balloon;
