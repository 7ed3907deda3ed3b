//! The binaries and plugin libraries under test: real `.so` files built by
//! cargo, once per test process, into the test's own target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The crates the tests run: the host binary and the plugins it loads.
const BUILT_PACKAGES: &[&str] = &[
    "taskit-host",
    "taskitctl",
    "taskit-demo",
    "taskit-demo-next",
    "taskit-fixture-faulty",
    "taskit-fixture-removable",
    "taskit-fixture-init-panic",
    "taskit-fixture-conflict",
    "taskit-fixture-no-root",
    "taskit-fixture-bad-version",
    "taskit-fixture-bad-layout",
    "taskit-fixture-crasher",
    "taskit-fixture-init-hang",
];

/// The target profile directory this test binary was built into
/// (`target/debug`), where the plugin libraries land too.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_owned()
}

/// Builds the host binary and every plugin crate the tests use (a no-op
/// when they are fresh), once per test process, and returns the directory
/// holding them.
pub fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let release = profile.file_name().is_some_and(|n| n == "release");
        let cargo = |args: &[&str]| {
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.arg("build")
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build {args:?} failed");
        };
        let mut packages = Vec::new();
        for p in BUILT_PACKAGES {
            packages.extend(["-p", p]);
        }
        cargo(&packages);
        cargo(&[
            "-p",
            "taskit",
            "--example",
            "load_and_call",
            "--bin",
            "taskit-bench",
        ]);
        profile
    })
}

/// The built binary of example `name`.
pub fn example(name: &str) -> PathBuf {
    built().join("examples").join(name)
}

/// The built `taskit-host` binary.
pub fn host_binary() -> PathBuf {
    built().join("taskit-host")
}

/// The built library of a plugin crate, e.g. `plugin("taskit_demo")`.
pub fn plugin(lib_name: &str) -> PathBuf {
    let path = built().join(format!("lib{lib_name}.so"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
