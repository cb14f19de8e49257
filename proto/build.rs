//! Generates the NRI and ttrpc message types with prost from `api/*.proto`.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so a fresh machine needs no protoc install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.btree_map(["."]);
    config.compile_protos(
        &["api/nri.proto", "api/ttrpc.proto"],
        &[std::path::Path::new("api"), &include],
    )?;
    println!("cargo:rerun-if-changed=api");
    Ok(())
}
