//! The Python frontend (`python/`, import name `taskit_native`): installed
//! with `pip install ./python` into a virtualenv, then its pytest suite
//! (python/tests) runs against the real `taskit-host` binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use taskit_harness::*;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A virtualenv with pytest and this tree's `taskit_native`, built again
/// (incrementally) on every run, so the tests test this code.
fn python_with_taskit_native() -> PathBuf {
    let python = venv_python(
        "pyfront-venv",
        "import pytest, cryptography",
        &["pytest", "cryptography"],
    );
    let target = profile_dir().parent().expect("target dir").to_owned();
    let package = workspace().join("python");
    pip_install(
        &python,
        [
            OsStr::new("--force-reinstall"),
            OsStr::new("--no-deps"),
            package.as_os_str(),
        ],
        // Share the workspace's build directory: dependencies compiled once.
        &[("CARGO_TARGET_DIR", target.as_os_str())],
    );
    python
}

fn pytest(python: &Path, args: &[&str]) {
    let plugins = [plugin("taskit_demo"), plugin("taskit_fixture_crasher")];
    let plugins = std::env::join_paths(&plugins).expect("plugin paths");
    let status = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(args)
        // Not python/: its taskit_native/ (no built module) would shadow
        // the installed package.
        .current_dir(workspace().join("python").join("tests"))
        .env("TASKIT_HOST_BIN", host_binary())
        .env("TASKIT_TEST_PLUGINS", plugins)
        .status()
        .expect("run pytest");
    assert!(status.success(), "the taskit_native pytest suite failed");
}

#[test]
fn the_python_frontend_passes_its_pytest_suite() {
    let python = python_with_taskit_native();
    pytest(&python, &["."]);
}
