//! Virtualenvs with packages from PyPI, made once under the target
//! directory, for tests that check against Python's own implementations.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python of a virtualenv called `name` in which `check` (Python code,
/// e.g. `import taskit.frontend`) runs; made with `packages` installed if
/// it does not run yet.
pub fn venv_python(name: &str, check: &str, packages: &[&str]) -> PathBuf {
    let venv = crate::built::profile_dir().join(name);
    let python = venv.join("bin").join("python");
    let ready = || {
        Command::new(&python)
            .args(["-c", check])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let status = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(status.success(), "cannot create a virtualenv");
        pip_install(&python, packages.iter().map(OsStr::new), &[]);
        assert!(ready(), "{check:?} fails after installing {packages:?}");
    }
    python
}

/// Runs `pip install` in the virtualenv of `python` with `args` (packages,
/// paths, options) and `env`; panics if it fails.
pub fn pip_install<'a>(
    python: &Path,
    args: impl IntoIterator<Item = &'a OsStr>,
    env: &[(&str, &OsStr)],
) {
    let args: Vec<&OsStr> = args.into_iter().collect();
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&args)
        .envs(env.iter().copied())
        .status()
        .expect("run pip install");
    assert!(status.success(), "pip install {args:?} failed");
}
