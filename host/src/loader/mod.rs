//! Opening one version of a plugin: shadow copy, ELF check, `dlopen`,
//! abi_stable's version and layout checks, task-table checks, `init`.
//!
//! The watched file is read once and never mapped: the loader maps a private
//! copy with a name used once (`<stem>.<generation>.so`), so overwriting the
//! watched file cannot truncate pages under a running plugin, and the
//! dynamic loader's cache of already-open paths never returns an old copy.

mod elf;
mod shadow;
pub(crate) mod strict;

use std::collections::{HashMap, HashSet};
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
use crate::worker::{Isolation, WorkerPlugin};

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
    /// Someone else than the host's user could have changed it (see
    /// `--allow-insecure-plugins`).
    #[error("unsafe to load: {0}")]
    Insecure(String),
}

impl LoadError {
    /// The variant as a number and the message, to cross from a worker.
    pub(crate) fn to_code(&self) -> (u8, &str) {
        match self {
            Self::Io(m) => (0, m),
            Self::NotALibrary(m) => (1, m),
            Self::Open(m) => (2, m),
            Self::NotAPlugin(m) => (3, m),
            Self::Incompatible(m) => (4, m),
            Self::InvalidTasks(m) => (5, m),
            Self::Init(m) => (6, m),
            Self::Insecure(m) => (7, m),
        }
    }

    /// The inverse of [`to_code`](Self::to_code); an unknown number is an
    /// initialisation failure.
    pub(crate) fn from_code(code: u8, message: String) -> Self {
        match code {
            0 => Self::Io(message),
            1 => Self::NotALibrary(message),
            2 => Self::Open(message),
            3 => Self::NotAPlugin(message),
            4 => Self::Incompatible(message),
            5 => Self::InvalidTasks(message),
            7 => Self::Insecure(message),
            _ => Self::Init(message),
        }
    }
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
    file: Prepared,
    opened: Opened,
    services: HostServices,
}

impl fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.opened.name)
            .field("version", &self.opened.version)
            .field("source", &self.file.source)
            .field("generation", &self.file.generation)
            .finish_non_exhaustive()
    }
}

impl PluginVersion {
    /// Initialises an opened plugin in this process.
    fn init(file: Prepared, opened: Opened, state: &Arc<HostState>) -> Result<Self, LoadError> {
        let services = services_for(state, &opened.name, &opened.version);
        opened.init(services)?;
        Ok(Self {
            file,
            opened,
            services,
        })
    }
}

impl Plugin for PluginVersion {
    fn name(&self) -> &str {
        &self.opened.name
    }

    fn version(&self) -> &str {
        &self.opened.version
    }

    fn source(&self) -> &Path {
        &self.file.source
    }

    fn generation(&self) -> u64 {
        self.file.generation
    }

    fn tasks(&self) -> &[String] {
        &self.opened.tasks
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
        self.opened.call(&request)
    }
}

impl Drop for PluginVersion {
    /// Releases what can be released safely: the shadow file. The mapping
    /// itself stays, because unloading a Rust library is not sound (its
    /// thread-local destructors, threads it spawned, or statics it handed out
    /// may still point into it) and glibc would often not unmap it anyway.
    fn drop(&mut self) {
        self.file.remove_copy();
        tracing::debug!(
            plugin = %self.opened.name,
            version = %self.opened.version,
            generation = self.file.generation,
            "released old version (last call ended); its code stays mapped"
        );
    }
}

/// A plugin file copied into the shadow directory and checked as far as
/// can be without running any of it: size, type, ELF headers.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The watched file.
    pub(crate) source: PathBuf,
    /// The private copy that gets mapped.
    pub(crate) shadow: PathBuf,
    /// Which load of the host this is.
    pub(crate) generation: u64,
    /// A hash of the file's bytes, to tell a real change from a `touch`.
    pub(crate) content_hash: u64,
}

impl Prepared {
    /// Removes the private copy (a mapping of it stays readable).
    pub(crate) fn remove_copy(&self) {
        if let Err(err) = fs::remove_file(&self.shadow) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(shadow = %self.shadow.display(), %err, "could not remove shadow copy");
            }
        }
    }
}

/// A plugin library mapped into this process and checked (abi_stable's
/// version and layout, the task table), not yet initialised.
pub(crate) struct Opened {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) tasks: Vec<String>,
    module: PluginModRef,
    // Never closed: see `PluginVersion`'s `Drop`.
    _library: ManuallyDrop<RawLibrary>,
}

impl Opened {
    /// Maps the private copy `shadow` of `source` and runs every check.
    pub(crate) fn open(shadow: &Path, source: &Path) -> Result<Self, LoadError> {
        let (library, module) = open(shadow, source)?;
        let name = module.name().to_string();
        let version = module.version().to_string();
        let tasks: Vec<String> = module.tasks().iter().map(|t| t.to_string()).collect();
        // From here on the library has run code: it stays mapped.
        let library = ManuallyDrop::new(library);
        validate_tasks(&name, &version, &tasks).map_err(LoadError::InvalidTasks)?;
        Ok(Self {
            name,
            version,
            tasks,
            module,
            _library: library,
        })
    }

    /// Runs the plugin's `init` with `services`.
    pub(crate) fn init(&self, services: HostServices) -> Result<(), LoadError> {
        match (self.module.init())(services) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(msg) => Err(LoadError::Init(msg.into_string())),
        }
    }

    /// Calls into the plugin.
    pub(crate) fn call(&self, request: &CallRequest<'_>) -> Result<Vec<u8>, TaskError> {
        match (self.module.call())(request) {
            RResult::ROk(bytes) => Ok(bytes.into_vec()),
            RResult::RErr(err) => Err(TaskError::from_ffi(&err)),
        }
    }
}

/// Plugin files larger than this are refused unless configured otherwise.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 256 << 20;

/// What [`Loader::load`] produced.
pub(crate) enum Loaded {
    /// A new version, checked and initialised.
    New {
        /// It, ready to serve.
        plugin: Arc<dyn Plugin>,
        /// A hash of its file's bytes.
        content_hash: u64,
    },
    /// The file holds exactly the bytes of the version already loaded.
    Unchanged,
}

/// Opens plugin versions from copies in its private shadow directory, in
/// this process or in worker processes.
pub(crate) struct Loader {
    shadow_dir: ShadowDir,
    generation: u64,
    max_bytes: u64,
    state: Arc<HostState>,
    isolation: Isolation,
    /// Load files others could have changed (with a warning).
    allow_insecure: bool,
    /// Files refused for what their bytes are: their content hash and why.
    /// Not tried again until their bytes change (in process, each try of a
    /// library mapped and then refused would stay mapped for good).
    refused: HashMap<PathBuf, (u64, LoadError)>,
}

/// Refusals remembered at most (a cache: past it, it starts over).
const MAX_REFUSED: usize = 4096;

impl Loader {
    /// A loader whose copies go to `shadow_dir`, refusing files over
    /// `max_bytes` (and, unless `allow_insecure`, files others could have
    /// changed), whose plugins report to `state` and run as `isolation`
    /// says.
    pub(crate) fn new(
        shadow_dir: ShadowDir,
        max_bytes: u64,
        state: Arc<HostState>,
        isolation: Isolation,
        allow_insecure: bool,
    ) -> Self {
        Self {
            shadow_dir,
            generation: 0,
            max_bytes,
            state,
            isolation,
            allow_insecure,
            refused: HashMap::new(),
        }
    }

    /// Whether a refusal is due to the file's bytes alone, so that trying
    /// the same bytes again is bound to fail the same way: not a read
    /// error or permissions, nor (in a worker, where a try costs nothing
    /// for good) an `init` that may depend on the world.
    fn refusal_is_final(&self, err: &LoadError) -> bool {
        match err {
            LoadError::Io(_) | LoadError::Insecure(_) => false,
            LoadError::Init(_) => matches!(self.isolation, Isolation::InProcess),
            _ => true,
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
        let Some(file) = self.prepare(source, current)? else {
            return Ok(Loaded::Unchanged);
        };
        let content_hash = file.content_hash;
        if let Some((hash, err)) = self.refused.get(source) {
            if *hash == content_hash {
                tracing::debug!(file = %source.display(), "same bytes as when it was refused; not tried again");
                let _ = fs::remove_file(&file.shadow);
                return Err(err.clone());
            }
        }
        let shadow = file.shadow.clone();
        let loaded: Result<Arc<dyn Plugin>, LoadError> = match &self.isolation {
            Isolation::InProcess => Opened::open(&file.shadow, &file.source)
                .and_then(|opened| PluginVersion::init(file, opened, &self.state))
                .map(|v| Arc::new(v) as Arc<dyn Plugin>),
            Isolation::Process(options) => {
                WorkerPlugin::start(file, options, &self.state).map(|p| p as Arc<dyn Plugin>)
            }
        };
        match loaded {
            Ok(plugin) => {
                self.refused.remove(source);
                Ok(Loaded::New {
                    plugin,
                    content_hash,
                })
            }
            Err(err) => {
                // Nothing of this copy is in use (a library that failed to
                // open or initialise is never called; a refused worker is
                // gone), so the file can go. A mapping made before the
                // refusal stays readable.
                let _ = fs::remove_file(&shadow);
                if self.refusal_is_final(&err) {
                    if self.refused.len() >= MAX_REFUSED {
                        self.refused.clear();
                    }
                    self.refused
                        .insert(source.to_owned(), (content_hash, err.clone()));
                }
                Err(err)
            }
        }
    }

    /// Refuses a file whose directory someone else than the host's user
    /// can write to (they could have put it there).
    fn check_directory(&self, source: &Path) -> Result<(), LoadError> {
        let Some(dir) = source.parent() else {
            return Ok(());
        };
        let meta =
            fs::metadata(dir).map_err(|e| LoadError::Io(format!("stat {}: {e}", dir.display())))?;
        match strict::unsafe_because(&meta, "plugins directory", dir) {
            Some(why) if !self.allow_insecure => Err(LoadError::Insecure(why)),
            _ => Ok(()),
        }
    }

    /// Copies `source` and checks the copy (what is checked is exactly what
    /// gets mapped, even if the watched file changes meanwhile). `None` if
    /// its contents hash to `current`.
    fn prepare(
        &mut self,
        source: &Path,
        current: Option<u64>,
    ) -> Result<Option<Prepared>, LoadError> {
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
        let copied = self
            .check_directory(source)
            .and_then(|()| copy_private(source, &shadow, self.max_bytes, self.allow_insecure))
            .and_then(|(mut copy, size, hash)| {
                elf::check_file(&mut copy, size)
                    .map_err(|p| LoadError::NotALibrary(p.to_string()))?;
                Ok(hash)
            });
        match copied {
            Ok(hash) if current == Some(hash) => {
                let _ = fs::remove_file(&shadow);
                Ok(None)
            }
            Ok(content_hash) => Ok(Some(Prepared {
                source: source.to_owned(),
                shadow,
                generation,
                content_hash,
            })),
            Err(err) => {
                let _ = fs::remove_file(&shadow);
                Err(err)
            }
        }
    }
}

/// Copies `source` to a new read-only file in the private shadow directory
/// and returns the copy (opened for reading), its size and a hash of its
/// contents.
///
/// Only a regular file of at most `max_bytes` is copied: the file is opened
/// without blocking (a FIFO would otherwise block until a writer comes) and
/// checked through its descriptor (a symlink to `/dev/zero` would otherwise
/// be copied forever). Memory use does not depend on the file's size.
fn copy_private(
    source: &Path,
    shadow: &Path,
    max_bytes: u64,
    allow_insecure: bool,
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
    // Checked through the descriptor: the file copied (a symlink's target).
    if let Some(why) = strict::unsafe_because(&meta, "plugin file", source) {
        if !allow_insecure {
            return Err(LoadError::Insecure(why));
        }
        tracing::warn!("loading it anyway (--allow-insecure-plugins): {why}");
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
        // Read-only, readable by a worker running as another user through
        // the descriptor the host passes it; nobody else can reach it, as
        // the shadow directory is the host user's alone.
        .mode(0o444)
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
/// such as `<stop>`). The name, the version and the ids go into log lines
/// and replies: none may hold a control character (a newline would forge a
/// log line).
fn validate_tasks(name: &str, version: &str, tasks: &[String]) -> Result<(), String> {
    if name.is_empty() {
        return Err("the plugin name is empty".into());
    }
    let printable = |what: &str, s: &str| {
        if s.chars().any(char::is_control) {
            Err(format!(
                "its {what} `{}` holds a control character",
                s.escape_debug()
            ))
        } else {
            Ok(())
        }
    };
    printable("name", name)?;
    printable("version", version)?;
    let mut seen = HashSet::new();
    for id in tasks {
        if id.is_empty() {
            return Err("a task id is empty".into());
        }
        printable("task id", id)?;
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
