//! Test PD: panics in init, so the launcher must report it by name and stop
//! the others.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("crasher");
}

fn init() -> pd::NoHandler {
    pd::debug_println!("CRASHER|INFO: about to panic");
    let shared = config::region::PING_TO_PONG.get();
    panic!(
        "deliberate panic in {} (region at {:#x})",
        config::PD_NAME,
        shared.vaddr
    );
}

pd::main!(init);
