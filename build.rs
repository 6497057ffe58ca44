//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`) and writes the file
//! descriptor set that gRPC server reflection serves; also the client side of etcd's protocol
//! (`proto/etcd`) for the etcd origin.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/rolegate/v1/authorizer.proto",
        "proto/rolegate/v1/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::compile(protos, ["proto"])?;
    let descriptor_path = out_dir.join("rolegate_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

    // Envoy's ext_authz service: a descriptor for server reflection only (the code comes from
    // the envoy-types crate).
    let envoy = [
        "proto/envoy/service/auth/v3/external_auth.proto",
        "proto/envoy/config/core/v3/base.proto",
        "proto/envoy/type/v3/http_status.proto",
        "proto/google/rpc/status.proto",
    ];
    for proto in envoy {
        println!("cargo:rerun-if-changed={proto}");
    }
    let envoy_descriptors = protox::compile(&envoy[..1], ["proto"])?;
    std::fs::write(
        out_dir.join("envoy_ext_authz_descriptor.bin"),
        prost::Message::encode_to_vec(&envoy_descriptors),
    )?;

    // etcd's protocol, as far as the etcd origin uses it: client stubs only, and not served by
    // reflection.
    let etcd = ["proto/etcd/etcdserverpb/rpc.proto"];
    println!("cargo:rerun-if-changed=proto/etcd");
    let etcd_descriptors = protox::compile(etcd, ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(etcd_descriptors)?;
    Ok(())
}
