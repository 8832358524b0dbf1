//! Generate the config modules of the test PDs in examples/pingpong and give
//! them the Microkit link setup when built for a `*-unknown-none` target.

fn main() {
    for pd in ["ping", "pong", "crasher"] {
        let xml = if pd == "crasher" {
            "examples/pingpong/crash.xml"
        } else {
            "examples/pingpong/system.xml"
        };
        if let Err(e) = sdf::build::generate(xml, pd) {
            panic!("{e}");
        }
    }
    if let Err(e) = sdf::build::link_microkit() {
        panic!("{e}");
    }
}
