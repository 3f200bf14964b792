//! Generates the CRI client (package runtime.v1) from proto/cri-runtime-v1.proto.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri-runtime-v1.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri-runtime-v1.proto"], &["proto"])?;
    Ok(())
}
