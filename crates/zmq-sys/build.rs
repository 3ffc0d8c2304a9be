//! Builds libzmq from the source `zeromq-src` carries, with CURVE backed by the libsodium
//! that `libsodium-sys-stable` compiled: no system libzmq, no apt step, no network.
//!
//! With libzmq's draft API, for ZMQ_ROUTER_NOTIFY.
//!
//! Then mends one libzmq 4.3.5 bug that lets any peer abort a server (ARCHITECTURE.md,
//! "libzmq patches"): `stream_engine_base.cpp` is patched, compiled again with the flags
//! zeromq-src used, and swapped into `libzmq.a` in place of the original object.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One textual change to a libzmq source file: `find` must occur exactly once.
struct Patch {
    file: &'static str,
    why: &'static str,
    find: &'static str,
    replace: &'static str,
}

/// The engine's heartbeat timer writes a PING even after input has failed (`_io_error`,
/// set when the peer hangs up while the engine's input is stopped: a ROUTER_HANDOVER
/// took its pipe mid-message), and `out_event` asserts that this never happens. A dead
/// engine is torn down instead, and `out_event` refuses to write on one.
///
/// And zeromq-src leaves out `ZMQ_HAVE_EVENTFD` on Linux, where libzmq's own builds set
/// it: every wake-up of a thread (a message for a sleeping socket or I/O thread) then
/// went through a Unix socket pair, each signal a `send` that allocates a socket buffer,
/// instead of an 8-byte `write` to an eventfd. The two files that use it are compiled
/// with it (no class layout depends on it).
const PATCHES: &[Patch] = &[
    Patch {
        file: "stream_engine_base.cpp",
        why: "heartbeat timer on an engine whose input failed",
        find: "    } else if (id_ == heartbeat_ivl_timer_id) {\n",
        replace: "    } else if (id_ == heartbeat_ivl_timer_id) {\n\
                  \x20       if (unlikely (_io_error)) {\n\
                  \x20           //  scale0: the connection is dead; tear it down, do not write\n\
                  \x20           _has_heartbeat_timer = false;\n\
                  \x20           error (connection_error);\n\
                  \x20           return;\n\
                  \x20       }\n",
    },
    Patch {
        file: "stream_engine_base.cpp",
        why: "write on an engine whose input failed",
        find: "void zmq::stream_engine_base_t::out_event ()\n{\n    zmq_assert (!_io_error);\n",
        replace: "void zmq::stream_engine_base_t::out_event ()\n{\n\
                  \x20   //  scale0: a PONG or PING due on a dead engine is dropped with it\n\
                  \x20   if (unlikely (_io_error))\n\
                  \x20       return;\n",
    },
    Patch {
        file: "ip.cpp",
        why: "signal with an eventfd: the pair of descriptors",
        find: EVENTFD_ANCHOR,
        replace: EVENTFD_DEFINES,
    },
    Patch {
        file: "signaler.cpp",
        why: "signal with an eventfd: sending and receiving a signal",
        find: EVENTFD_ANCHOR,
        replace: EVENTFD_DEFINES,
    },
];

/// Where the eventfd defines go: first thing, before any header tests them.
const EVENTFD_ANCHOR: &str = "#include \"precompiled.hpp\"\n";
const EVENTFD_DEFINES: &str = "//  scale0: as libzmq's own Linux builds have it\n\
                               #define ZMQ_HAVE_EVENTFD 1\n\
                               #define ZMQ_HAVE_EVENTFD_CLOEXEC 1\n\
                               #include \"precompiled.hpp\"\n";

fn main() {
    let include = env::var("DEP_SODIUM_INCLUDE")
        .expect("libsodium-sys-stable sets DEP_SODIUM_INCLUDE for its dependents");
    let lib = env::var("DEP_SODIUM_LIB")
        .expect("libsodium-sys-stable sets DEP_SODIUM_LIB for its dependents");
    println!("cargo:rerun-if-changed=build.rs");
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, &include)))
        // For ZMQ_ROUTER_NOTIFY (crates/zmq-draft); in 4.3.5 the draft API changes no
        // header's class layout, only what some .cpp files accept.
        .enable_draft(true)
        .build();

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = env::var("TARGET").expect("cargo sets TARGET");
    if !target.contains("linux") {
        // The flags below mirror zeromq-src's Linux build; elsewhere libzmq stays as shipped.
        println!("cargo:warning=libzmq's stream-engine patch is applied on Linux only");
        return;
    }
    patch_and_swap(&out, Path::new(&include));
}

/// Patches the sources zeromq-src copied to `OUT_DIR/source`, compiles the patched files
/// with the defines zeromq-src 0.3.6 uses on Linux (an object compiled with other
/// defines would disagree with the rest of the library about class layouts), and
/// replaces their objects in `libzmq.a`.
fn patch_and_swap(out: &Path, sodium_include: &Path) {
    let source = out.join("source");
    let patched_dir = out.join("patched");
    fs::create_dir_all(&patched_dir).expect("creating OUT_DIR/patched");

    let mut files: Vec<&str> = PATCHES.iter().map(|p| p.file).collect();
    files.dedup();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++11")
        .include(source.join("include"))
        .include(source.join("src"))
        // zeromq-src's empty platform.hpp: the defines come from the command line.
        .include(out)
        .include(sodium_include)
        .out_dir(&patched_dir)
        .warnings(false);
    for (key, value) in [
        ("ZMQ_BUILD_TESTS", "OFF"),
        ("ZMQ_BUILD_DRAFT_API", "1"),
        ("ZMQ_USE_CV_IMPL_STL11", "1"),
        ("ZMQ_STATIC", "1"),
        ("ZMQ_USE_BUILTIN_SHA1", "1"),
        ("ZMQ_HAVE_WS", "1"),
        ("ZMQ_USE_LIBSODIUM", "1"),
        ("ZMQ_HAVE_CURVE", "1"),
        ("ZMQ_HAVE_LINUX", "1"),
        ("ZMQ_IOTHREAD_POLLER_USE_EPOLL", "1"),
        ("ZMQ_POLL_BASED_ON_POLL", "1"),
        ("ZMQ_HAVE_IPC", "1"),
        ("HAVE_STRNLEN", "1"),
        ("ZMQ_HAVE_UIO", "1"),
        ("ZMQ_HAVE_STRUCT_SOCKADDR_UN", "1"),
    ] {
        build.define(key, value);
    }
    for file in &files {
        let path = source.join("src").join(file);
        let mut text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for p in PATCHES.iter().filter(|p| p.file == *file) {
            let found = text.matches(p.find).count();
            assert!(
                found == 1,
                "libzmq patch '{}' expects its anchor once in {file}, found {found} times: \
                 has zeromq-src changed? (it is pinned in Cargo.toml)",
                p.why
            );
            text = text.replacen(p.find, p.replace, 1);
        }
        let patched = patched_dir.join(file);
        fs::write(&patched, text).expect("writing a patched libzmq source");
        build.file(&patched);
    }
    let objects = build.compile_intermediates();

    let archive = out.join("lib").join("libzmq.a");
    let ar = build.get_archiver();
    let listing = run(Command::new(ar.get_program()).arg("t").arg(&archive));
    for file in &files {
        let stem = file.trim_end_matches(".cpp");
        let suffix = format!("-{stem}.o");
        let member = listing
            .lines()
            .find(|m| m.ends_with(&suffix))
            .unwrap_or_else(|| panic!("no {suffix} in {}", archive.display()));
        run(Command::new(ar.get_program())
            .arg("d")
            .arg(&archive)
            .arg(member));
    }
    run(Command::new(ar.get_program())
        .arg("rs")
        .arg(&archive)
        .args(&objects));
}

fn run(cmd: &mut Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(output.status.success(), "{cmd:?} failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
