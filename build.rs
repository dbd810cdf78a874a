//! Compiles `proto/record.proto` with a vendored `protoc`, so a fresh machine needs no system
//! protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/record.proto");
    // `bytes` fields as `bytes::Bytes`: the send stage decodes a record from the Kafka
    // payload it already holds, and the Seg body is then a slice of it, not a copy.
    prost_build::Config::new()
        .bytes(["."])
        .compile_protos(&["proto/record.proto"], &["proto/"])?;
    Ok(())
}
