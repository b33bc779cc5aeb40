// Generates the liveness stream's gRPC code (protoc comes from `scripts/setup`, as for
// etcd-client's own build).
fn main() {
    println!("cargo:rerun-if-changed=proto/liveness.proto");
    if let Err(e) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/liveness.proto"], &["proto"])
    {
        panic!("compiling proto/liveness.proto (is protoc installed? run scripts/setup): {e}");
    }
}
