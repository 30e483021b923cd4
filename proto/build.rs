//! Compiles `router.proto` with protox (pure Rust, no protoc needed) and prost-build,
//! and generates the protobuf JSON mapping of every message (serde impls, pbjson-build)
//! from the same descriptors.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=router.proto");
    let fds = protox::compile(["router.proto"], ["."])?;
    let descriptors = fds.encode_to_vec();
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".ringrouter.v1"])?;
    Ok(())
}
