//! Builds libzmq from the source `zeromq-src` carries, with CURVE backed by the libsodium
//! that `libsodium-sys-stable` compiled: no system libzmq, no apt step, no network.

use std::env;

fn main() {
    let include = env::var("DEP_SODIUM_INCLUDE")
        .expect("libsodium-sys-stable sets DEP_SODIUM_INCLUDE for its dependents");
    let lib = env::var("DEP_SODIUM_LIB")
        .expect("libsodium-sys-stable sets DEP_SODIUM_LIB for its dependents");
    println!("cargo:rerun-if-changed=build.rs");
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
