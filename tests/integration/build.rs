//! Generates the CRI client from the vendored `runtime.v1` proto with a vendored `protoc`, so a
//! fresh machine needs no protobuf compiler installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The build script is single-threaded; nothing else reads the environment concurrently.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/runtime/v1/api.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/runtime/v1/api.proto");
    Ok(())
}
