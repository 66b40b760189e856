//! Compiles `shared/proto/fedlnm.proto` with protox (pure Rust: no system `protoc` needed). A node is
//! only ever a client, so only the client is generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../shared/proto/fedlnm.proto";
    println!("cargo::rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../shared/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
