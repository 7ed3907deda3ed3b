//! The container image (`daemonizing/Dockerfile`) and the Kubernetes
//! manifests (`daemonizing/kubernetes/`): their structure, checked against
//! each other, against the flags the built `taskit-host` really has, and
//! against the rules the host enforces at start (private token file,
//! plugins directory and shadow root nobody else may write). No Docker
//! engine or cluster is needed, nor used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use taskit_harness::host_binary;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// YAML access that says where it failed.

/// The node at `path` (keys separated by dots) under `node`; panics naming
/// the path when it is missing.
fn at<'a>(node: &'a Yaml, path: &str) -> &'a Yaml {
    let mut here = node;
    for key in path.split('.') {
        here = &here[key];
        assert!(!here.is_badvalue(), "{path}: missing (at {key:?})");
    }
    here
}

/// The node at `path`, if there.
fn get<'a>(node: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    let mut here = node;
    for key in path.split('.') {
        here = &here[key];
        if here.is_badvalue() || here.is_null() {
            return None;
        }
    }
    Some(here)
}

fn text<'a>(node: &'a Yaml, path: &str) -> &'a str {
    at(node, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path}: not a string: {:?}", at(node, path)))
}

fn int(node: &Yaml, path: &str) -> i64 {
    at(node, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{path}: not an integer: {:?}", at(node, path)))
}

fn list<'a>(node: &'a Yaml, path: &str) -> &'a [Yaml] {
    at(node, path)
        .as_vec()
        .unwrap_or_else(|| panic!("{path}: not a list: {:?}", at(node, path)))
}

fn strings(node: &Yaml, path: &str) -> Vec<String> {
    list(node, path)
        .iter()
        .map(|item| match item {
            Yaml::String(s) | Yaml::Real(s) => s.clone(),
            Yaml::Integer(n) => n.to_string(),
            other => panic!("{path}: not a scalar: {other:?}"),
        })
        .collect()
}

/// A mapping of strings to strings (labels, selectors, annotations).
fn string_map(node: &Yaml, path: &str) -> BTreeMap<String, String> {
    at(node, path)
        .as_hash()
        .unwrap_or_else(|| panic!("{path}: not a mapping"))
        .iter()
        .map(|(k, v)| {
            let k = k.as_str().unwrap_or_else(|| panic!("{path}: key {k:?}"));
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{path}.{k}: not a string: {v:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

// ---------------------------------------------------------------------------
// The manifests.

struct Manifests {
    /// (file name, document), every document of every file.
    docs: Vec<(String, Yaml)>,
}

impl Manifests {
    fn load() -> Self {
        let dir = root().join("daemonizing/kubernetes");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            let name = file.file_name().unwrap().to_str().unwrap().to_owned();
            // Multi-document aware: one file may hold several objects.
            let parsed = YamlLoader::load_from_str(&source)
                .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            for doc in parsed.into_iter().filter(|d| !d.is_null()) {
                assert!(
                    doc.as_hash().is_some(),
                    "{name}: a document that is no object"
                );
                text(&doc, "kind");
                docs.push((name.clone(), doc));
            }
        }
        Self { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Yaml> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"].as_str() == Some(kind))
            .map(|(_, d)| d)
            .collect()
    }

    fn one(&self, kind: &str) -> &Yaml {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "one {kind} expected, found {}", all.len());
        all[0]
    }

    /// The hosts' workload and its pod template.
    fn workload(&self) -> &Yaml {
        let mut found: Vec<&Yaml> = self.all("Deployment");
        found.extend(self.all("StatefulSet"));
        assert_eq!(found.len(), 1, "one Deployment or StatefulSet of hosts");
        found[0]
    }

    fn pod(&self) -> &Yaml {
        at(self.workload(), "spec.template")
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        string_map(self.pod(), "metadata.labels")
    }

    fn init_containers(&self) -> &[Yaml] {
        get(self.pod(), "spec.initContainers")
            .and_then(Yaml::as_vec)
            .map_or(&[], Vec::as_slice)
    }

    fn all_containers(&self) -> Vec<&Yaml> {
        let mut all: Vec<&Yaml> = self.init_containers().iter().collect();
        all.extend(list(self.pod(), "spec.containers"));
        all
    }

    /// The container running taskit-host.
    fn host(&self) -> &Yaml {
        let hosts: Vec<&Yaml> = list(self.pod(), "spec.containers")
            .iter()
            .filter(|c| {
                get(c, "command")
                    .and_then(|cmd| cmd[0].as_str())
                    .is_some_and(|p| p.ends_with("/taskit-host"))
            })
            .collect();
        assert_eq!(
            hosts.len(),
            1,
            "one container whose command is the taskit-host binary"
        );
        hosts[0]
    }

    /// What the host container passes to taskit-host.
    fn host_args(&self) -> Vec<String> {
        let mut args = strings(self.host(), "command");
        args.remove(0);
        if get(self.host(), "args").is_some() {
            args.extend(strings(self.host(), "args"));
        }
        args
    }

    fn volume(&self, name: &str) -> &Yaml {
        list(self.pod(), "spec.volumes")
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name:?}"))
    }

    /// The pod's Secret volume holding the admin token.
    fn secret_volume(&self) -> &Yaml {
        let secrets: Vec<&Yaml> = list(self.pod(), "spec.volumes")
            .iter()
            .filter(|v| get(v, "secret").is_some())
            .collect();
        assert_eq!(secrets.len(), 1, "one Secret volume: the admin token");
        secrets[0]
    }
}

struct Mount {
    volume: String,
    path: PathBuf,
    read_only: bool,
}

fn mounts(container: &Yaml) -> Vec<Mount> {
    get(container, "volumeMounts")
        .and_then(Yaml::as_vec)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|m| {
            assert!(
                get(m, "subPath").is_none(),
                "subPath mounts are not checked"
            );
            Mount {
                volume: text(m, "name").to_owned(),
                path: PathBuf::from(text(m, "mountPath")),
                read_only: m["readOnly"].as_bool() == Some(true),
            }
        })
        .collect()
}

/// The mount of `container` that holds `path` (the deepest one).
fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.path))
        .max_by_key(|m| m.path.components().count())
}

/// `path` seen from `to`, where it is `from` that holds it.
fn rebase(path: &Path, from: &Mount, to: &Mount) -> PathBuf {
    to.path.join(path.strip_prefix(&from.path).unwrap())
}

/// The shell script an init container runs (`sh -c SCRIPT` or `-ec`).
fn script(container: &Yaml) -> String {
    let mut command = strings(container, "command");
    if get(container, "args").is_some() {
        command.extend(strings(container, "args"));
    }
    assert!(
        command[0].ends_with("sh") && command.len() == 3 && command[1].contains('c'),
        "{}: a command of the form [sh, -c, SCRIPT]: {command:?}",
        text(container, "name")
    );
    command.pop().unwrap()
}

/// The mode of `install -m MODE ... ARG` or `install -d -m MODE ARG` in
/// `script`, on the line that names every one of `paths`.
fn install_mode(script: &str, paths: &[&Path]) -> u32 {
    let line = script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with("install ")
                && paths.iter().all(|p| {
                    l.split_whitespace()
                        .any(|w| Path::new(w.trim_matches('"')) == *p)
                })
        })
        .unwrap_or_else(|| panic!("no `install -m MODE` line naming {paths:?} in:\n{script}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "-m")
        .unwrap_or_else(|| panic!("{line}: no -m MODE"));
    u32::from_str_radix(words[i + 1], 8).unwrap_or_else(|_| panic!("{line}: mode not octal"))
}

// ---------------------------------------------------------------------------
// The host's flags.

/// The long flags `taskit-host --help` lists, each with whether it takes a
/// value.
fn host_flags() -> BTreeMap<String, bool> {
    let out = Command::new(host_binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    for line in help.lines() {
        // Flag lines are indented by at most 6 spaces ("  -h, --help",
        // "      --plugins <DIR>"); their descriptions by 10.
        let indent = line.len() - line.trim_start().len();
        let line = line.trim();
        if indent > 6 || !line.starts_with('-') {
            continue;
        }
        let Some(long) = line.split([' ', ',']).find(|w| w.starts_with("--")) else {
            continue;
        };
        flags.insert(long.to_owned(), line.contains('<'));
    }
    assert!(
        flags.contains_key("--plugins") && flags.len() > 20,
        "{help}"
    );
    flags
}

/// `args` as (flag, value) pairs, each flag one that `taskit-host --help`
/// lists. Except `--metrics`: the manifests use it ahead of the host that
/// serves it, so it is checked only once the help lists it; until then it
/// is taken to need a value.
fn parse_flags(args: &[String], flags: &BTreeMap<String, bool>) -> Vec<(String, Option<String>)> {
    let mut parsed = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        assert!(
            arg.starts_with("--"),
            "{arg:?}: taskit-host takes flags only"
        );
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let takes_value = match flags.get(flag) {
            Some(takes_value) => *takes_value,
            None if flag == "--metrics" => true,
            None => panic!("{flag} is passed to taskit-host, whose --help does not list it"),
        };
        let value = match inline {
            Some(value) => {
                assert!(takes_value, "{flag} takes no value");
                Some(value)
            }
            None => takes_value.then(|| {
                args.next()
                    .unwrap_or_else(|| panic!("{flag}: no value"))
                    .clone()
            }),
        };
        parsed.push((flag.to_owned(), value));
    }
    parsed
}

/// The one value of `flag` in the manifests' host arguments.
fn value_of(parsed: &[(String, Option<String>)], flag: &str) -> String {
    let values: Vec<&String> = parsed
        .iter()
        .filter(|(f, _)| f == flag)
        .filter_map(|(_, v)| v.as_ref())
        .collect();
    assert_eq!(
        values.len(),
        1,
        "{flag} given once with a value: {parsed:?}"
    );
    values[0].clone()
}

fn manifest_flags(m: &Manifests) -> Vec<(String, Option<String>)> {
    parse_flags(&m.host_args(), &host_flags())
}

/// The container port named `name` of the host container.
fn container_port(m: &Manifests, name: &str) -> i64 {
    let port = list(m.host(), "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("the host container has no port named {name:?}"));
    int(port, "containerPort")
}

fn port_of(addr: &str) -> i64 {
    let addr: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("{addr}: not an address: {e}"));
    assert!(
        addr.ip().is_unspecified(),
        "{addr}: must listen on every address of the pod (the kubelet and peers use its IP)"
    );
    i64::from(addr.port())
}

// ---------------------------------------------------------------------------
// The Dockerfile.

struct Instruction {
    stage: usize,
    keyword: String,
    rest: String,
}

struct Dockerfile {
    instructions: Vec<Instruction>,
    /// (image, name) of each FROM.
    stages: Vec<(String, Option<String>)>,
}

impl Dockerfile {
    fn load() -> Self {
        let source = std::fs::read_to_string(root().join("daemonizing/Dockerfile")).unwrap();
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in source.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        let mut instructions = Vec::new();
        let mut stages = Vec::new();
        for line in logical.into_iter().filter(|l| !l.trim().is_empty()) {
            let (keyword, rest) = line.split_once(' ').unwrap_or((&line, ""));
            let keyword = keyword.to_ascii_uppercase();
            if stages.is_empty() && keyword == "ARG" {
                // Build arguments for the FROM lines.
                continue;
            }
            if keyword == "FROM" {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let name = (words.len() == 3 && words[1].eq_ignore_ascii_case("as"))
                    .then(|| words[2].to_owned());
                stages.push((words[0].to_owned(), name));
            }
            assert!(!stages.is_empty(), "{line}: before any FROM");
            instructions.push(Instruction {
                stage: stages.len() - 1,
                keyword,
                rest: rest.trim().to_owned(),
            });
        }
        Self {
            instructions,
            stages,
        }
    }

    fn stage_index(&self, name: &str) -> usize {
        self.stages
            .iter()
            .position(|(_, n)| n.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no stage named {name}"))
    }

    fn in_stage(&self, stage: usize, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|i| i.stage == stage && i.keyword == keyword)
            .map(|i| i.rest.as_str())
            .collect()
    }

    /// Where the COPYs of `stage` put a file named `file`.
    fn copied_to(&self, stage: usize, file: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for copy in self.in_stage(stage, "COPY") {
            let words: Vec<&str> = copy
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (dest, sources) = words.split_last().unwrap();
            for source in sources {
                if Path::new(source).file_name().is_some_and(|n| n == file) {
                    found.push(if dest.ends_with('/') {
                        Path::new(dest).join(file)
                    } else {
                        PathBuf::from(dest)
                    });
                } else if dest.ends_with('/') && sources.len() == 1 && source.ends_with('/') {
                    // A directory copied whole: its files land under dest.
                    found.push(Path::new(dest).join(file));
                }
            }
        }
        found
    }

    /// The JSON array of an ENTRYPOINT or CMD in exec form.
    fn exec_form(&self, stage: usize, keyword: &str) -> Vec<String> {
        let all = self.in_stage(stage, keyword);
        let last = all
            .last()
            .unwrap_or_else(|| panic!("no {keyword} in the final stage"));
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{keyword} {last}: not exec form: {e}"))
    }
}

// ---------------------------------------------------------------------------
// The checks.

#[test]
fn every_manifest_parses_and_the_kustomization_lists_each_file() {
    let m = Manifests::load();
    let kinds: BTreeSet<&str> = m.docs.iter().map(|(_, d)| text(d, "kind")).collect();
    for kind in [
        "Namespace",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "Kustomization",
    ] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }

    let files: BTreeSet<String> = m
        .docs
        .iter()
        .filter(|(_, d)| text(d, "kind") != "Kustomization")
        .map(|(f, _)| f.clone())
        .collect();
    let listed: BTreeSet<String> = strings(m.one("Kustomization"), "resources")
        .into_iter()
        .collect();
    assert_eq!(listed, files, "kustomization.yaml resources");

    // Everything in the one namespace the docs' DNS name names.
    let namespace = text(m.one("Namespace"), "metadata.name");
    for (file, doc) in &m.docs {
        let kind = text(doc, "kind");
        if kind == "Namespace" || kind == "Kustomization" {
            continue;
        }
        assert_eq!(text(doc, "metadata.namespace"), namespace, "{file}: {kind}");
    }
}

#[test]
fn the_service_is_headless_and_selects_the_host_pods_on_their_port() {
    let m = Manifests::load();
    let service = m.one("Service");
    // Headless: DNS answers every pod's address, for the frontend's
    // dns:NAME:PORT discovery, instead of one virtual IP.
    assert_eq!(text(service, "spec.clusterIP"), "None");
    let labels = m.pod_labels();
    let selector = string_map(service, "spec.selector");
    assert!(!selector.is_empty() && is_subset(&selector, &labels));
    let workload = string_map(m.workload(), "spec.selector.matchLabels");
    assert!(is_subset(&workload, &labels));
    let pdb = string_map(m.one("PodDisruptionBudget"), "spec.selector.matchLabels");
    assert!(is_subset(&pdb, &labels));

    let taskit_port = container_port(&m, "taskit");
    let port = list(service, "spec.ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("taskit"))
        .expect("a service port named taskit");
    assert_eq!(int(port, "port"), taskit_port);
    match &port["targetPort"] {
        Yaml::String(name) => assert_eq!(name, "taskit"),
        Yaml::Integer(n) => assert_eq!(*n, taskit_port),
        Yaml::BadValue => {}
        other => panic!("targetPort {other:?}"),
    }
    // The address the host listens on is the container's port.
    let flags = manifest_flags(&m);
    let binds: Vec<i64> = flags
        .iter()
        .filter(|(f, _)| f == "--bind")
        .map(|(_, v)| port_of(v.as_deref().unwrap()))
        .collect();
    assert_eq!(binds, [taskit_port], "--bind");

    // The docs point frontends at this name.
    let dns = format!(
        "dns:{}.{}.svc.cluster.local:{taskit_port}",
        text(service, "metadata.name"),
        text(service, "metadata.namespace")
    );
    let docs = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    assert!(docs.contains(&dns), "docs/operations.md does not say {dns}");
}

#[test]
fn every_flag_given_to_the_host_is_one_it_has() {
    let m = Manifests::load();
    let flags = host_flags();
    let dockerfile = Dockerfile::load();
    let last = dockerfile.stages.len() - 1;
    for args in [m.host_args(), dockerfile.exec_form(last, "CMD")] {
        // Panics on a flag the help does not list (but --metrics, until
        // the host has it), or one that lacks its value.
        let parsed = parse_flags(&args, &flags);
        assert!(!parsed.is_empty());
        for (flag, value) in parsed {
            if flag == "--metrics" && !flags.contains_key("--metrics") {
                eprintln!("taskit-host has no --metrics yet: its use is not checked");
                assert!(value.is_some());
            }
        }
    }
}

#[test]
fn the_probes_and_prometheus_use_the_metrics_port() {
    let m = Manifests::load();
    let metrics = container_port(&m, "metrics");
    let flags = manifest_flags(&m);
    assert_eq!(port_of(&value_of(&flags, "--metrics")), metrics);

    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(probe_spec) = get(m.host(), probe) else {
            assert_ne!(probe, "readinessProbe", "no readinessProbe");
            assert_ne!(probe, "livenessProbe", "no livenessProbe");
            continue;
        };
        assert_eq!(text(probe_spec, "httpGet.path"), "/healthz", "{probe}");
        match at(probe_spec, "httpGet.port") {
            Yaml::String(name) => assert_eq!(name, "metrics", "{probe}"),
            Yaml::Integer(n) => assert_eq!(*n, metrics, "{probe}"),
            other => panic!("{probe}: port {other:?}"),
        }
    }

    let annotations = string_map(m.pod(), "metadata.annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn the_plugins_reach_the_host_from_the_plugin_image() {
    let m = Manifests::load();
    let flags = manifest_flags(&m);
    let plugins = PathBuf::from(value_of(&flags, "--plugins"));
    let host_mounts = mounts(m.host());
    let mount = mount_of(&host_mounts, &plugins)
        .unwrap_or_else(|| panic!("--plugins {} is on no volume", plugins.display()));
    // Whoever may write the plugins directory controls the host: it only
    // reads it.
    assert!(mount.read_only, "the plugins volume is mounted read-only");
    let volume = m.volume(&mount.volume);
    if get(volume, "emptyDir").is_some() {
        // The kubelet makes an emptyDir's root writable by every user,
        // which the host refuses as a plugins directory (loader/strict.rs):
        // the plugins go in a directory of their own inside it.
        assert_ne!(plugins, mount.path, "--plugins is the emptyDir's root");
    }

    // An init container fills it from the plugin image's directory, which
    // the Dockerfile's `plugins` stage fills.
    let fillers: Vec<&Yaml> = m
        .init_containers()
        .iter()
        .filter(|c| {
            mounts(c)
                .iter()
                .any(|x| x.volume == mount.volume && !x.read_only)
        })
        .collect();
    assert_eq!(
        fillers.len(),
        1,
        "one init container writes the plugins volume"
    );
    let filler = fillers[0];
    let filler_mounts = mounts(filler);
    let theirs = filler_mounts
        .iter()
        .find(|x| x.volume == mount.volume)
        .unwrap();
    let target = rebase(&plugins, mount, theirs);
    let script = script(filler);
    let dir_mode = install_mode(&script, &[&target]);
    assert_eq!(
        dir_mode & 0o022,
        0,
        "the plugins directory's mode {dir_mode:o}"
    );

    let dockerfile = Dockerfile::load();
    let stage = dockerfile.stage_index("plugins");
    let copied = dockerfile.copied_to(stage, "demo.so");
    assert_eq!(copied.len(), 1, "the plugins stage copies demo.so once");
    let source_dir = copied[0].parent().unwrap();
    let pattern = format!("{}/*.so", source_dir.display());
    assert!(
        script.contains(&pattern),
        "{}: does not copy {pattern}:\n{script}",
        text(filler, "name")
    );
    assert!(
        text(filler, "image").starts_with("taskit-plugins:"),
        "the plugin image"
    );
    let images: Vec<String> = list(m.one("Kustomization"), "images")
        .iter()
        .map(|i| text(i, "name").to_owned())
        .collect();
    assert!(images.contains(&"taskit-plugins".to_owned()), "{images:?}");
    assert!(images.contains(&"taskit-host".to_owned()), "{images:?}");
}

#[test]
fn the_admin_token_secret_reaches_the_host_as_a_private_file() {
    let m = Manifests::load();
    let flags = manifest_flags(&m);
    let token = PathBuf::from(value_of(&flags, "--admin-token-file"));
    let host_mounts = mounts(m.host());
    let mount = mount_of(&host_mounts, &token)
        .unwrap_or_else(|| panic!("--admin-token-file {} is on no volume", token.display()));

    let secret = m.secret_volume();
    let secret_name = text(secret, "name");
    // The host refuses a token file its group or others may read
    // (read_token_file: mode & 0o044), and with fsGroup set the kubelet
    // makes a Secret volume's files group-readable whatever defaultMode
    // says. So the host reads a private copy, made by an init container.
    assert!(
        host_mounts.iter().all(|x| x.volume != secret_name),
        "the host container mounts the Secret itself: with fsGroup its file is 0440, which the host refuses"
    );
    assert!(get(m.volume(&mount.volume), "emptyDir").is_some());

    let copiers: Vec<&Yaml> = m
        .init_containers()
        .iter()
        .filter(|c| mounts(c).iter().any(|x| x.volume == secret_name))
        .collect();
    assert_eq!(copiers.len(), 1, "one init container reads the Secret");
    let copier = copiers[0];
    let copier_mounts = mounts(copier);
    let secret_mount = copier_mounts
        .iter()
        .find(|x| x.volume == secret_name)
        .unwrap();
    // The Secret's key, and the file it is in the volume.
    let (key, file) = match get(secret, "secret.items") {
        Some(items) => (text(&items[0], "key"), text(&items[0], "path")),
        None => ("admin-token", "admin-token"),
    };
    let copy_mount = copier_mounts
        .iter()
        .find(|x| x.volume == mount.volume && !x.read_only)
        .expect("the init container writes the host's token volume");
    let source = secret_mount.path.join(file);
    let dest = rebase(&token, mount, copy_mount);
    let mode = install_mode(&script(copier), &[&source, &dest]);
    assert_eq!(
        mode & 0o044,
        0,
        "token copy mode {mode:o}: read_token_file refuses it"
    );
    assert_ne!(
        mode & 0o400,
        0,
        "token copy mode {mode:o}: the host cannot read it"
    );

    // The copier reads the Secret's file through fsGroup, and nobody else
    // can. (Modes are written in decimal: YAML 1.2 reads 0440 as 440.)
    let pod_security = at(m.pod(), "spec.securityContext");
    assert!(int(pod_security, "fsGroup") > 0, "fsGroup");
    let default_mode = int(secret, "secret.defaultMode");
    assert_eq!(default_mode & 0o004, 0, "defaultMode {default_mode:o}");

    // The docs make the Secret, under the name and key mounted.
    let secret_ref = text(secret, "secret.secretName");
    let docs = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let create = format!("create secret generic {secret_ref}");
    assert!(
        docs.contains(&create),
        "docs/operations.md does not say {create}"
    );
    let from = format!("--from-file={key}=");
    assert!(
        docs.contains(&from),
        "docs/operations.md does not say {from}"
    );
}

#[test]
fn the_shadow_copies_go_to_a_private_writable_directory() {
    let m = Manifests::load();
    let flags = manifest_flags(&m);
    let shadow = PathBuf::from(value_of(&flags, "--shadow-dir"));
    let host_mounts = mounts(m.host());
    let mount = mount_of(&host_mounts, &shadow)
        .unwrap_or_else(|| panic!("--shadow-dir {} is on no volume", shadow.display()));
    assert!(!mount.read_only, "--shadow-dir is on a read-only mount");
    if get(m.volume(&mount.volume), "emptyDir").is_some() {
        // ShadowDir::create refuses a root every user may write without
        // the sticky bit, as an emptyDir's root is.
        assert_ne!(shadow, mount.path, "--shadow-dir is the emptyDir's root");
        let maker = m
            .init_containers()
            .iter()
            .find(|c| mounts(c).iter().any(|x| x.volume == mount.volume))
            .expect("an init container makes the shadow directory");
        let maker_mounts = mounts(maker);
        let theirs = maker_mounts
            .iter()
            .find(|x| x.volume == mount.volume)
            .unwrap();
        let mode = install_mode(&script(maker), &[&rebase(&shadow, mount, theirs)]);
        assert_eq!(mode & 0o022, 0, "the shadow directory's mode {mode:o}");
    }
}

#[test]
fn the_pods_run_unprivileged_within_limits_and_drain_in_their_grace_period() {
    let m = Manifests::load();
    let pod_security = at(m.pod(), "spec.securityContext");
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true));
    let uid = int(pod_security, "runAsUser");
    assert!(uid > 0);

    let declared: BTreeSet<&str> = list(m.pod(), "spec.volumes")
        .iter()
        .map(|v| text(v, "name"))
        .collect();
    let mut used = BTreeSet::new();
    for container in m.all_containers() {
        let name = text(container, "name");
        let security = at(container, "securityContext");
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}"
        );
        assert!(
            strings(security, "capabilities.drop").contains(&"ALL".to_owned()),
            "{name}: capabilities.drop ALL"
        );
        for resource in ["cpu", "memory"] {
            at(container, &format!("resources.requests.{resource}"));
            at(container, &format!("resources.limits.{resource}"));
        }
        for mount in mounts(container) {
            assert!(
                declared.contains(mount.volume.as_str()),
                "{name}: {}",
                mount.volume
            );
            used.insert(mount.volume);
        }
    }
    let declared: BTreeSet<String> = declared.into_iter().map(str::to_owned).collect();
    assert_eq!(used, declared, "every volume is mounted");

    // SIGTERM comes after preStop; the host then waits --drain-timeout for
    // the calls it accepted before it exits. Both fit in the grace period.
    let flags = manifest_flags(&m);
    let drain: i64 = value_of(&flags, "--drain-timeout").parse().unwrap();
    let pre_stop = match get(m.host(), "lifecycle.preStop") {
        None => 0,
        Some(hook) => match get(hook, "sleep.seconds") {
            Some(s) => s.as_i64().unwrap(),
            None => {
                let command = strings(hook, "exec.command");
                assert!(command[0].ends_with("sleep"), "preStop {command:?}");
                command[1].parse().unwrap()
            }
        },
    };
    let grace = int(m.pod(), "spec.terminationGracePeriodSeconds");
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + --drain-timeout {drain}"
    );
}

#[test]
fn the_dockerfile_builds_the_three_packages_and_matches_the_manifests() {
    let m = Manifests::load();
    let dockerfile = Dockerfile::load();
    assert!(dockerfile.stages.len() >= 2, "a multi-stage build");
    assert!(
        dockerfile.stages[0].0.starts_with("rust:"),
        "the builder is the official rust image: {}",
        dockerfile.stages[0].0
    );
    let builds: Vec<&str> = dockerfile
        .instructions
        .iter()
        .filter(|i| i.keyword == "RUN" && i.rest.contains("cargo build"))
        .map(|i| i.rest.as_str())
        .collect();
    assert_eq!(builds.len(), 1, "one cargo build");
    let words: Vec<&str> = builds[0].split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "cargo build without {flag}");
    }
    let packages: BTreeSet<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    assert_eq!(
        packages,
        BTreeSet::from(["taskit-host", "taskitctl", "taskit-demo"])
    );
    // The demo plugin as cargo names it.
    assert!(builds[0].contains("target/release/libtaskit_demo.so"));

    // The final stage: what the host container runs.
    let last = dockerfile.stages.len() - 1;
    let user = dockerfile.in_stage(last, "USER");
    let user = user.last().expect("a USER in the final stage");
    let image_uid: i64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: not numeric (runAsNonRoot needs a number)"));
    assert!(image_uid > 0, "USER {user}");
    let pod_uid = int(m.pod(), "spec.securityContext.runAsUser");
    assert_eq!(image_uid, pod_uid, "the image's USER and runAsUser");

    let entrypoint = dockerfile.exec_form(last, "ENTRYPOINT");
    let command = strings(m.host(), "command");
    assert_eq!(
        entrypoint[0], command[0],
        "ENTRYPOINT and the container's command"
    );
    let host_path = PathBuf::from(&command[0]);
    assert!(
        dockerfile
            .copied_to(last, "taskit-host")
            .contains(&host_path),
        "the image has no {}",
        host_path.display()
    );
    let ctl = host_path.with_file_name("taskitctl");
    assert!(dockerfile.copied_to(last, "taskitctl").contains(&ctl));

    // The image alone serves the demo plugin from the directory its CMD
    // names.
    let cmd = parse_flags(&dockerfile.exec_form(last, "CMD"), &host_flags());
    let plugins = PathBuf::from(value_of(&cmd, "--plugins"));
    assert!(dockerfile
        .copied_to(last, "demo.so")
        .contains(&plugins.join("demo.so")));
    let exposed: BTreeSet<i64> = dockerfile
        .in_stage(last, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    assert_eq!(
        port_of(&value_of(&cmd, "--bind")),
        container_port(&m, "taskit")
    );
    for port in ["taskit", "metrics"] {
        assert!(exposed.contains(&container_port(&m, port)), "EXPOSE {port}");
    }
    // The init container that copies the token uses the host image.
    let host_image = text(m.host(), "image");
    assert!(
        m.init_containers()
            .iter()
            .any(|c| text(c, "image") == host_image),
        "an init container of the host image"
    );

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(ignored.contains(&".git"), ".dockerignore: .git");
    assert!(
        ignored
            .iter()
            .any(|l| l.trim_end_matches('/').ends_with("target")),
        ".dockerignore: target"
    );
}
