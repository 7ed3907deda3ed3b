//! Opening one version of a plugin: shadow copy, ELF check, `dlopen`,
//! abi_stable's version and layout checks, task-table checks, `init`.
//!
//! The watched file is read once and never mapped: the loader maps a private
//! copy with a name used once (`<stem>.<generation>.so`), so overwriting the
//! watched file cannot truncate pages under a running plugin, and the
//! dynamic loader's cache of already-open paths never returns an old copy.

mod elf;
mod shadow;

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary};
use abi_stable::std_types::{RResult, RSlice, RStr};
use taskit_plugin_api::host_side::abi::{CallRequest, HostServices, PluginModRef, ABI_VERSION};
use taskit_plugin_api::wire::admin::is_reserved;
use taskit_plugin_api::TaskError;

pub(crate) use shadow::{remove_all as remove_shadow_dirs, ShadowDir};

use crate::call::TaskCall;
use crate::registry::Plugin;
use crate::services::{services_for, HostState};

/// Why a plugin file was refused. The previous version, if any, keeps serving.
///
/// Each message is one short line that says what is wrong and, where the
/// fix is the plugin's, what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or its shadow copy written.
    #[error("cannot read or copy the file: {0}")]
    Io(String),
    /// The file is not a complete shared library for this machine.
    #[error("not a loadable library: {0}")]
    NotALibrary(String),
    /// The dynamic loader refused it.
    #[error("the dynamic loader refused it: {0}")]
    Open(String),
    /// A library, but not a TaskIt plugin (no root module symbol).
    #[error("not a TaskIt plugin (no root module; was it built with `export_plugin!`?): {0}")]
    NotAPlugin(String),
    /// Built against another plugin ABI, or a layout this host does not
    /// share (the full layout comparison is logged at debug level).
    #[error("incompatible with this host: {0}")]
    Incompatible(String),
    /// Its task table is unusable (empty name, duplicate or reserved ids).
    #[error("invalid task table: {0}")]
    InvalidTasks(String),
    /// Its root module constructor or `init` failed or panicked.
    #[error("plugin initialisation failed: {0}")]
    Init(String),
}

/// Identity of a file's contents as far as the file system tells: a change
/// in any part means "a new version may be there".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    /// The fingerprint of the file at `path` (following symlinks).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// One loaded, checked and initialised version of a plugin, mapped into
/// this process.
///
/// Shared through an `Arc`: the registry holds one reference, every call in
/// flight another, so a call that began on this version finishes on it
/// however many reloads happen meanwhile.
pub(crate) struct PluginVersion {
    name: String,
    version: String,
    source: PathBuf,
    shadow: PathBuf,
    generation: u64,
    content_hash: u64,
    tasks: Vec<String>,
    module: PluginModRef,
    services: HostServices,
    // Never closed: see `Drop`.
    _library: ManuallyDrop<RawLibrary>,
}

impl fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("source", &self.source)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl PluginVersion {
    /// A hash of the file's bytes, to tell a real change from a `touch`.
    pub(crate) fn content_hash(&self) -> u64 {
        self.content_hash
    }
}

impl Plugin for PluginVersion {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn source(&self) -> &Path {
        &self.source
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn tasks(&self) -> &[String] {
        &self.tasks
    }

    fn run(&self, index: usize, call: &TaskCall) -> Result<Vec<u8>, TaskError> {
        let request = CallRequest {
            task: index,
            codec: RStr::from_str(call.codec().name()),
            args: RSlice::from_slice(call.args()),
            kwargs: RSlice::from_slice(call.kwargs()),
            cancelled: call.cancelled(),
            host: self.services,
        };
        match (self.module.call())(&request) {
            RResult::ROk(bytes) => Ok(bytes.into_vec()),
            RResult::RErr(err) => Err(TaskError::from_ffi(&err)),
        }
    }
}

impl Drop for PluginVersion {
    /// Releases what can be released safely: the shadow file. The mapping
    /// itself stays, because unloading a Rust library is not sound (its
    /// thread-local destructors, threads it spawned, or statics it handed out
    /// may still point into it) and glibc would often not unmap it anyway.
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.shadow) {
            tracing::debug!(shadow = %self.shadow.display(), %err, "could not remove shadow copy");
        }
        tracing::debug!(
            plugin = %self.name,
            version = %self.version,
            generation = self.generation,
            "released old version (last call ended); its code stays mapped"
        );
    }
}

/// Plugin files larger than this are refused unless configured otherwise.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 256 << 20;

/// What [`Loader::load`] produced.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// A new version, checked and initialised.
    New(PluginVersion),
    /// The file holds exactly the bytes of the version already loaded.
    Unchanged,
}

/// Opens plugin versions into its private shadow directory.
pub(crate) struct Loader {
    shadow_dir: ShadowDir,
    generation: u64,
    max_bytes: u64,
    state: Arc<HostState>,
}

impl Loader {
    /// A loader whose copies go to `shadow_dir`, refusing files over
    /// `max_bytes`, whose plugins report to `state`.
    pub(crate) fn new(shadow_dir: ShadowDir, max_bytes: u64, state: Arc<HostState>) -> Self {
        Self {
            shadow_dir,
            generation: 0,
            max_bytes,
            state,
        }
    }

    /// Loads the plugin file `source`: nothing of it is used unless every
    /// check passes. If its contents hash to `current` (a `touch`, or the
    /// same file copied again), nothing is loaded and [`Loaded::Unchanged`]
    /// is returned.
    pub(crate) fn load(
        &mut self,
        source: &Path,
        current: Option<u64>,
    ) -> Result<Loaded, LoadError> {
        self.generation += 1;
        let generation = self.generation;
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        let shadow = self
            .shadow_dir
            .path()
            .join(format!("{stem}.{generation}.so"));
        // Copy first, then check the copy: what is checked is exactly what
        // gets mapped, even if the watched file changes meanwhile.
        let copied =
            copy_private(source, &shadow, self.max_bytes).and_then(|(mut copy, size, hash)| {
                elf::check_file(&mut copy, size)
                    .map_err(|p| LoadError::NotALibrary(p.to_string()))?;
                Ok(hash)
            });
        let content_hash = match copied {
            Ok(hash) => hash,
            Err(err) => {
                let _ = fs::remove_file(&shadow);
                return Err(err);
            }
        };
        if current == Some(content_hash) {
            let _ = fs::remove_file(&shadow);
            return Ok(Loaded::Unchanged);
        }
        match open(&shadow, source) {
            Ok((library, module)) => self
                .finish(source, shadow, generation, content_hash, library, module)
                .map(Loaded::New),
            Err(err) => {
                // Nothing of this copy is in use (a library that failed to
                // open or initialise is never called), so the file can go.
                let _ = fs::remove_file(&shadow);
                Err(err)
            }
        }
    }

    fn finish(
        &self,
        source: &Path,
        shadow: PathBuf,
        generation: u64,
        content_hash: u64,
        library: RawLibrary,
        module: PluginModRef,
    ) -> Result<PluginVersion, LoadError> {
        let name = module.name().to_string();
        let version = module.version().to_string();
        let tasks: Vec<String> = module.tasks().iter().map(|t| t.to_string()).collect();
        // From here on the library has run code; whatever happens it stays
        // mapped, so the shadow file is removed only with the version.
        let library = ManuallyDrop::new(library);
        let refuse = |err: LoadError| {
            let _ = fs::remove_file(&shadow);
            Err(err)
        };
        if let Err(msg) = validate_tasks(&name, &tasks) {
            return refuse(LoadError::InvalidTasks(msg));
        }
        let services = services_for(&self.state, &name, &version);
        if let RResult::RErr(msg) = (module.init())(services) {
            return refuse(LoadError::Init(msg.into_string()));
        }
        Ok(PluginVersion {
            name,
            version,
            source: source.to_owned(),
            shadow,
            generation,
            content_hash,
            tasks,
            module,
            services,
            _library: library,
        })
    }
}

/// Copies `source` to a new file readable by this user only and returns the
/// copy (opened for reading), its size and a hash of its contents.
///
/// Only a regular file of at most `max_bytes` is copied: the file is opened
/// without blocking (a FIFO would otherwise block until a writer comes) and
/// checked through its descriptor (a symlink to `/dev/zero` would otherwise
/// be copied forever). Memory use does not depend on the file's size.
fn copy_private(
    source: &Path,
    shadow: &Path,
    max_bytes: u64,
) -> Result<(fs::File, u64, u64), LoadError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        LoadError::Io(format!("{what} {}: {e}", path.display()))
    };
    let from = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(source)
        .map_err(|e| io("open", source, e))?;
    let meta = from.metadata().map_err(|e| io("stat", source, e))?;
    if !meta.is_file() {
        return Err(LoadError::NotALibrary("not a regular file".into()));
    }
    let size = meta.len();
    if size > max_bytes {
        return Err(LoadError::NotALibrary(format!(
            "{size} bytes, over the limit of {max_bytes} bytes for a plugin file"
        )));
    }
    let mut to = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(shadow)
        .map_err(|e| io("create", shadow, e))?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut reader = from.take(size);
    let mut buf = vec![0u8; 64 << 10];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("read", source, e)),
        };
        hasher.write(&buf[..n]);
        to.write_all(&buf[..n])
            .map_err(|e| io("write", shadow, e))?;
        copied += n as u64;
    }
    if copied != size {
        return Err(LoadError::Io(format!(
            "{} changed size while being read ({size} bytes, then {copied})",
            source.display()
        )));
    }
    to.flush().map_err(|e| io("write", shadow, e))?;
    Ok((to, size, hasher.finish()))
}

/// `dlopen`, then the root module through this library's own header (never
/// `RootModule::load_from*`, which caches one module per type for the life
/// of the process), with abi_stable's version and layout checks.
fn open(shadow: &Path, source: &Path) -> Result<(RawLibrary, PluginModRef), LoadError> {
    let library =
        RawLibrary::load_at(shadow).map_err(|e| LoadError::Open(library_error_text(&e)))?;
    // SAFETY: the header is only used while `library` is alive, and the
    // library is never closed once a module has been taken from it.
    let header = match unsafe { lib_header_from_raw_library(&library) } {
        Ok(header) => header,
        Err(err @ LibraryError::GetSymbolError { .. }) => {
            // Never ran plugin code beyond its static constructors: dropping
            // (dlclose) is as safe as the dlopen was.
            return Err(LoadError::NotAPlugin(library_error_text(&err)));
        }
        Err(err) => {
            std::mem::forget(library);
            return Err(refusal(&err, source));
        }
    };
    match header.init_root_module::<PluginModRef>() {
        Ok(module) => Ok((library, module)),
        Err(err) => {
            // The layout checks may have run code of the library; keep it mapped.
            std::mem::forget(library);
            Err(refusal(&err, source))
        }
    }
}

/// What to tell an operator about a library the checks refused: one short
/// line. abi_stable's own text for a layout mismatch runs to kilobytes (every
/// type of the interface, field by field); it goes to the debug log.
fn refusal(err: &LibraryError, source: &Path) -> LoadError {
    let rebuild = "rebuild it against this host's taskit-plugin-api";
    match err {
        LibraryError::RootModule { .. } => LoadError::Init(library_error_text(err)),
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
            LoadError::Incompatible(format!(
                "built for plugin ABI {actual_version}, this host speaks ABI {ABI_VERSION}; {rebuild}"
            ))
        }
        LibraryError::AbiInstability(_) => {
            tracing::debug!(
                file = %source.display(),
                comparison = %library_error_text(err),
                "plugin ABI layout comparison"
            );
            LoadError::Incompatible(format!(
                "its plugin ABI layout differs from this host's (ABI {ABI_VERSION}); {rebuild}"
            ))
        }
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            tracing::debug!(file = %source.display(), details = %library_error_text(err), "abi_stable header");
            LoadError::Incompatible(format!(
                "built with an abi_stable or a compiler ABI this host does not share; {rebuild}"
            ))
        }
        LibraryError::Many(errors) => match errors.first() {
            Some(first) => refusal(first, source),
            None => LoadError::Incompatible(rebuild.to_owned()),
        },
        other => LoadError::Incompatible(library_error_text(other)),
    }
}

fn library_error_text(err: &LibraryError) -> String {
    err.to_string()
        .trim()
        .replace('\n', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Task ids are the keys of the host's routing table: non-empty, unique
/// within the plugin, and not starting with `<` (reserved for admin signals
/// such as `<stop>`).
fn validate_tasks(name: &str, tasks: &[String]) -> Result<(), String> {
    if name.is_empty() {
        return Err("the plugin name is empty".into());
    }
    let mut seen = HashSet::new();
    for id in tasks {
        if id.is_empty() {
            return Err("a task id is empty".into());
        }
        if is_reserved(id) {
            return Err(format!(
                "task id `{id}` is reserved (ids starting with `<` are admin signals)"
            ));
        }
        if !seen.insert(id.as_str()) {
            return Err(format!("task id `{id}` is exported twice"));
        }
    }
    Ok(())
}
