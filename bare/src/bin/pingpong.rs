//! The bare image of pd's ping/pong test pair (pd/examples/pingpong).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod image {
    include!(concat!(env!("OUT_DIR"), "/image_pingpong.rs"));
}

#[cfg(target_os = "none")]
#[path = "../boot/mod.rs"]
mod boot;

/// Called by the boot stub with a stack, zeroed `.bss` and the identity map.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "C" fn bare_main() -> ! {
    image::image_main(boot::platform())
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "the bare image runs in QEMU: build it for aarch64-unknown-none or x86_64-unknown-none (tools qemu --platform bare)"
    );
    std::process::exit(2);
}
