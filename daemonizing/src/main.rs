//! `taskitctl`: control TaskIt hosts over a range of ports, or call a task.
//!
//! ```text
//! taskitctl status 127.0.0.1 54543-54546
//! taskitctl stop   127.0.0.1 54543,54545
//! taskitctl call   127.0.0.1 add 4 4
//! taskitctl call   127.0.0.1:54544 greet '"Ada"' --kw excited=true
//! taskitctl status dns:taskit-hosts.taskit.svc 54543
//! ```

mod ports;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use taskit_plugin_api::frontend::{
    BackendAddr, CallOptions, FrontEnd, FrontendConfig, FrontendError,
};
use taskit_plugin_api::tls::ClientTlsOptions;
use taskit_plugin_api::wire::admin::{parse_seconds, read_token_file, Reply, Signal};

/// Controls TaskIt hosts: status, stop, kill, tasks and reload over a list
/// or range of ports, or calls one task.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "PORTS is N, N,M,K or N-M (inclusive), e.g. 54543-54546.\n\
Exit status: 0 all went well; 1 a host answered with an error; 2 bad usage;\n\
3 a host could not be reached."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Speak the TaskIt 4.0 protocol (for original Python backends).
    #[arg(long, global = true, visible_alias = "compat")]
    taskit4: bool,

    /// File holding the admin token, for hosts started with
    /// --admin-token-file. Without it, stop, kill and reload send a host on
    /// this machine the token it made (in its runtime directory).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Speak TLS (hosts' --tls-bind), trusting the system's root
    /// certificates.
    #[arg(long, global = true)]
    tls: bool,

    /// Speak TLS, trusting the CA in this PEM file (instead of the
    /// system's roots); repeat for several.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Vec<PathBuf>,

    /// Client certificate chain (PEM), for hosts that require one
    /// (--tls-client-ca).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The name hosts' certificates must carry (default: the HOST given).
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,

    /// File holding the hosts' call token (--call-token-file).
    #[arg(long, global = true, value_name = "FILE")]
    call_token_file: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for each answer.
    #[arg(long, global = true, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    timeout: Duration,
}

/// The hosts a command goes to: one address, many ports.
#[derive(Debug, clap::Args)]
struct Hosts {
    /// The hosts' address: a name or an IP (127.0.0.1 for hosts on this
    /// machine), or dns:NAME for every address NAME resolves to (each one a
    /// host, e.g. the pods behind a headless Kubernetes Service).
    host: String,
    /// Their ports: N, N,M,K or N-M (inclusive), e.g. 54543-54546.
    ports: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Running-task count of each host: "up, N jobs running", where N
    /// counts the status call itself (an idle host says 1), or "down".
    Status(Hosts),
    /// Stop each host: it answers the calls it accepted, then exits.
    Stop(Hosts),
    /// End each host at once.
    Kill(Hosts),
    /// The plugins and task ids each host serves.
    Tasks(Hosts),
    /// Make each host rescan its plugins directory now.
    Reload(Hosts),
    /// Call TASK on HOST[:PORT] with JSON arguments and print the JSON result.
    Call {
        /// HOST or HOST:PORT (default port 54543), or dns:NAME[:PORT] for
        /// the least loaded of the addresses NAME resolves to.
        target: String,
        /// The task id, e.g. add.
        task: String,
        /// Positional arguments, each a JSON value (quote strings: '"text"').
        args: Vec<String>,
        /// A keyword argument, as key=JSON; repeat for several.
        #[arg(long = "kw", value_name = "KEY=JSON")]
        kwargs: Vec<String>,
    },
}

const EXIT_REMOTE_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_DOWN: u8 = 3;

/// A failure to run the command at all, with its exit status.
struct Fail(u8, String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskitctl: cannot start: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, message)) => {
            eprintln!("taskitctl: {message}");
            ExitCode::from(code)
        }
    }
}

fn config(cli: &Cli) -> Result<FrontendConfig, Fail> {
    let admin_token = cli
        .token_file
        .as_deref()
        .map(|path| read_token_file(path, false))
        .transpose()
        .map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
    let call_token = cli
        .call_token_file
        .as_deref()
        .map(|path| read_token_file(path, false))
        .transpose()
        .map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
    let tls = if cli.tls || !cli.tls_ca.is_empty() || cli.tls_cert.is_some() {
        let options = ClientTlsOptions {
            ca_files: cli.tls_ca.clone(),
            system_roots: cli.tls_ca.is_empty(),
            identity: cli.tls_cert.clone().zip(cli.tls_key.clone()),
            server_name: cli.tls_server_name.clone(),
        };
        Some(
            options
                .load()
                .map_err(|e| Fail(EXIT_USAGE, format!("TLS: {e}")))?,
        )
    } else {
        None
    };
    Ok(FrontendConfig {
        admin_token,
        call_token,
        tls,
        connect_timeout: cli.timeout.min(Duration::from_secs(5)),
        ..FrontendConfig::default()
    })
}

fn backend(cli: &Cli, addr: BackendAddr) -> BackendAddr {
    if cli.taskit4 {
        addr.taskit4()
    } else {
        addr
    }
}

async fn run(cli: Cli) -> Result<u8, Fail> {
    let config = config(&cli)?;
    let timeout = cli.timeout;
    let (signal, host, spec) = match &cli.command {
        Command::Call {
            target,
            task,
            args,
            kwargs,
        } => return call(&cli, config, timeout, target, task, args, kwargs).await,
        Command::Status(hosts) => (Signal::Status, &hosts.host, &hosts.ports),
        Command::Stop(hosts) => (Signal::Stop, &hosts.host, &hosts.ports),
        Command::Kill(hosts) => (Signal::Kill, &hosts.host, &hosts.ports),
        Command::Tasks(hosts) => (Signal::Tasks, &hosts.host, &hosts.ports),
        Command::Reload(hosts) => (Signal::Reload, &hosts.host, &hosts.ports),
    };
    let ports = ports::expand(spec).map_err(|e| Fail(EXIT_USAGE, format!("bad PORTS: {e}")))?;
    let named: Vec<BackendAddr> = match host.strip_prefix("dns:") {
        Some(name) if name.is_empty() || name.parse::<std::net::IpAddr>().is_ok() => {
            return Err(Fail(
                EXIT_USAGE,
                format!("bad HOST {host:?}: dns: needs a name"),
            ))
        }
        Some(name) => ports.iter().map(|&p| BackendAddr::dns(name, p)).collect(),
        None => ports
            .iter()
            .map(|&p| BackendAddr::new(host.clone(), p))
            .collect(),
    };
    // Every address behind each name, in port order; a name that does not
    // resolve is reported in its place.
    let mut targets: Vec<(BackendAddr, Option<FrontendError>)> = Vec::new();
    let resolver = FrontEnd::with_config(Vec::<BackendAddr>::new(), config.clone());
    for addr in named {
        match resolver.resolve_backends(backend(&cli, addr.clone())).await {
            Ok(found) if found.is_empty() => targets.push((
                addr.clone(),
                Some(FrontendError::Resolve {
                    name: addr.to_string(),
                    message: "no addresses".into(),
                }),
            )),
            Ok(found) => targets.extend(found.into_iter().map(|a| (a, None))),
            Err(err) => targets.push((addr, Some(err))),
        }
    }
    let addrs: Vec<BackendAddr> = targets
        .iter()
        .filter(|(_, failed)| failed.is_none())
        .map(|(a, _)| a.clone())
        .collect();
    // The addresses behind a name are checked against the name.
    let mut config = config;
    if let (Some(name), Some(tls)) = (host.strip_prefix("dns:"), config.tls.take()) {
        let tls = tls
            .or_server_name(name)
            .map_err(|e| Fail(EXIT_USAGE, format!("TLS: {e}")))?;
        config.tls = Some(tls);
    }
    let frontend = FrontEnd::with_config(addrs, config);
    // Ask up to 64 hosts at once (a long range of dead ports would otherwise
    // take a connect timeout each), and print in port order.
    let mut outcomes = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(64) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|(addr, failed)| {
                let (frontend, addr, failed) = (frontend.clone(), addr.clone(), failed.clone());
                tokio::spawn(async move {
                    if let Some(err) = failed {
                        return Err(err);
                    }
                    tokio::time::timeout(timeout, frontend.send_signal(addr, signal))
                        .await
                        .unwrap_or(Err(FrontendError::Timeout(timeout)))
                })
            })
            .collect();
        for task in tasks {
            outcomes.push(task.await.unwrap_or_else(|e| {
                Err(FrontendError::Protocol {
                    backend: String::new(),
                    message: e.to_string(),
                })
            }));
        }
    }
    let mut worst = 0u8;
    for ((addr, _), outcome) in targets.into_iter().zip(outcomes) {
        let (code, text, value) = describe(signal, outcome);
        worst = worst.max(code);
        if cli.json {
            let mut line = json!({"host": addr.host, "port": addr.port});
            if let (Value::Object(line), Value::Object(fields)) = (&mut line, value) {
                line.extend(fields);
            }
            println!("{line}");
        } else {
            println!("{addr} --> {text}");
        }
    }
    Ok(worst)
}

fn unreachable(err: &FrontendError) -> bool {
    matches!(
        err,
        FrontendError::BackendNotAvailable
            | FrontendError::ConnectionLost(_)
            | FrontendError::Stopping(_)
    )
}

/// Exit code, text line, and JSON fields for one port's outcome.
fn describe(signal: Signal, outcome: Result<Reply, FrontendError>) -> (u8, String, Value) {
    match outcome {
        Ok(Reply::Status(n)) => (
            0,
            format!("up, {n} jobs running"),
            json!({"state": "up", "running": n.parse::<u64>().ok()}),
        ),
        Ok(Reply::Done) if signal == Signal::Kill => {
            (0, "terminated".into(), json!({"state": "terminated"}))
        }
        Ok(Reply::Done) => (0, "stopped".into(), json!({"state": "stopped"})),
        Ok(Reply::Tasks(plugins)) => {
            let text = plugins
                .iter()
                .map(|p| {
                    let mut line = format!("{} {} [{}]", p.name, p.version, p.tasks.join(", "));
                    if p.isolation == "process" {
                        let pids: Vec<String> = p.workers.iter().map(u32::to_string).collect();
                        line += &format!(
                            " workers={} running={} waiting={}",
                            pids.join(","),
                            p.running,
                            p.waiting
                        );
                        if p.restarts > 0 {
                            line += &format!(" restarts={}", p.restarts);
                        }
                        if let Some(cause) = &p.last_crash {
                            line += &format!(" last_crash=\"{cause}\"");
                        }
                        if p.failed.is_some() {
                            line += " FAILED";
                        }
                    }
                    line
                })
                .collect::<Vec<_>>()
                .join("; ");
            let text = if text.is_empty() {
                "up, no tasks".to_owned()
            } else {
                format!("up, {text}")
            };
            (0, text, json!({"state": "up", "plugins": plugins}))
        }
        Ok(Reply::Reload(r)) => (
            0,
            format!(
                "reloaded: {} loaded, {} refused, {} removed, {} unchanged",
                r.loaded.len(),
                r.refused.len(),
                r.removed.len(),
                r.unchanged
            ),
            json!({"state": "up", "reload": r}),
        ),
        Err(err) if unreachable(&err) => (EXIT_DOWN, "down".into(), json!({"state": "down"})),
        Err(FrontendError::BackendProcessing { kind, args }) => (
            EXIT_REMOTE_ERROR,
            format!("error: {kind} {}", Value::from(args.clone())),
            json!({"state": "error", "type": kind, "args": args}),
        ),
        Err(err) => (
            EXIT_DOWN,
            format!("failed: {err}"),
            json!({"state": "failed", "message": err.to_string()}),
        ),
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value, Fail> {
    serde_json::from_str(text).map_err(|e| {
        Fail(
            EXIT_USAGE,
            format!("{what} {text:?} is not JSON ({e}); quote strings, e.g. '\"{text}\"'"),
        )
    })
}

async fn call(
    cli: &Cli,
    config: FrontendConfig,
    timeout: Duration,
    target: &str,
    task: &str,
    args: &[String],
    kwargs: &[String],
) -> Result<u8, Fail> {
    let addr: BackendAddr = target
        .parse()
        .map_err(|e| Fail(EXIT_USAGE, format!("bad HOST[:PORT]: {e}")))?;
    let values = args
        .iter()
        .map(|a| parse_json("argument", a))
        .collect::<Result<Vec<Value>, Fail>>()?;
    let mut options = CallOptions::default().timeout(timeout);
    for kw in kwargs {
        let (key, value) = kw
            .split_once('=')
            .ok_or_else(|| Fail(EXIT_USAGE, format!("--kw {kw:?} is not KEY=JSON")))?;
        if key.is_empty() {
            return Err(Fail(EXIT_USAGE, format!("--kw {kw:?} has an empty key")));
        }
        options = options.kw(key, parse_json(&format!("--kw {key}"), value)?);
    }
    let frontend = FrontEnd::with_config([backend(cli, addr.clone())], config);
    let result = frontend.call_with::<Value>(task, &values, &options).await;
    match result {
        Ok(value) => {
            if cli.json {
                println!("{}", json!({"ok": value}));
            } else {
                println!("{value}");
            }
            Ok(0)
        }
        Err(FrontendError::BackendProcessing { kind, args }) => {
            if cli.json {
                println!("{}", json!({"error": {"type": kind, "args": args}}));
            } else {
                eprintln!("error: {kind} {}", Value::from(args));
            }
            Ok(EXIT_REMOTE_ERROR)
        }
        Err(err) if unreachable(&err) => Err(Fail(EXIT_DOWN, format!("{addr} is down: {err}"))),
        Err(err @ FrontendError::Timeout(_)) => Err(Fail(EXIT_DOWN, format!("{addr}: {err}"))),
        Err(err) => Err(Fail(EXIT_REMOTE_ERROR, format!("{addr}: {err}"))),
    }
}
