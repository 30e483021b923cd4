//! Compiles `router.proto` with protox (pure Rust, no protoc needed) and prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=router.proto");
    let fds = protox::compile(["router.proto"], ["."])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
