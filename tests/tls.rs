//! TLS on the native protocol, mutual TLS and the call token, against the
//! real host with certificates made here (rcgen).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use serde_json::Value;
use taskit_harness::*;
use taskit_plugin_api::error::kind;
use taskit_plugin_api::frontend::{BackendAddr, BlockingFrontEnd, FrontendConfig, FrontendError};
use taskit_plugin_api::tls::ClientTlsOptions;

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A certificate for `localhost` and 127.0.0.1, for a server or a
    /// client: its chain and key, written to `dir`.
    fn issue(&self, dir: &TempDir, name: &str, client: bool) -> (PathBuf, PathBuf) {
        self.issue_for(dir, name, client, true)
    }

    /// The same, for `localhost` alone unless `with_ip`.
    fn issue_for(
        &self,
        dir: &TempDir,
        name: &str,
        client: bool,
        with_ip: bool,
    ) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        if with_ip {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            dir.join(&format!("{name}.pem")),
            dir.join(&format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn write(&self, dir: &TempDir, name: &str) -> PathBuf {
        let file = dir.join(&format!("{name}.pem"));
        std::fs::write(&file, self.cert.pem()).unwrap();
        file
    }
}

/// A host serving the demo plugins in plain text and with TLS.
struct TlsHost {
    host: HostProcess,
    plain: SocketAddr,
    tls: SocketAddr,
    _plugins: TempDir,
}

/// A host with the certificate and key `server`, started with `extra`.
fn tls_host(server: &(PathBuf, PathBuf), extra: &[&str]) -> TlsHost {
    let plugins = demo_dir("tls-plugins");
    let mut args = vec![
        "--plugins".to_owned(),
        plugins.path().to_str().unwrap().to_owned(),
        "--tls-bind".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--tls-cert".to_owned(),
        server.0.to_str().unwrap().to_owned(),
        "--tls-key".to_owned(),
        server.1.to_str().unwrap().to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut host = HostProcess::start(&args);
    let plain = host.ready();
    let line = host.seen.last().unwrap().clone();
    let tls = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tls="))
        .and_then(|a| a.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no TLS address in {line}"));
    TlsHost {
        host,
        plain,
        tls,
        _plugins: plugins,
    }
}

fn client(
    addr: SocketAddr,
    tls: Option<ClientTlsOptions>,
    call_token: Option<&str>,
) -> BlockingFrontEnd {
    let config = FrontendConfig {
        tls: tls.map(|t| t.load().unwrap()),
        call_token: call_token.map(str::to_owned),
        ..FrontendConfig::default()
    };
    BlockingFrontEnd::with_config([addr], config).unwrap()
}

fn trusting(ca: PathBuf) -> ClientTlsOptions {
    ClientTlsOptions {
        ca_files: vec![ca],
        ..ClientTlsOptions::default()
    }
}

#[test]
fn calls_succeed_over_tls_and_clear_text_is_refused_there() {
    let dir = TempDir::new("tls-basic");
    let ca = Ca::new("test CA");
    let server = ca.issue(&dir, "server", false);
    let TlsHost { plain, tls, .. } = &tls_host(&server, &[]);
    let (plain, tls) = (*plain, *tls);

    let fe = client(tls, Some(trusting(ca.write(&dir, "ca"))), None);
    assert_eq!(fe.work::<i64>("add", &(4, 4)).unwrap(), 8);
    let big = "é".repeat(100_000);
    assert_eq!(fe.work::<String>("echo", &(big.as_str(),)).unwrap(), big);
    // By name too: the certificate names localhost.
    let by_name = BlockingFrontEnd::with_config(
        [BackendAddr::new("localhost", tls.port())],
        FrontendConfig {
            tls: Some(trusting(dir.join("ca.pem")).load().unwrap()),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    assert_eq!(by_name.work::<i64>("add", &(1, 2)).unwrap(), 3);

    // Clear text to the TLS port: nothing is served.
    let clear = client(tls, None, None);
    assert_eq!(
        clear.work::<i64>("add", &(1, 1)).unwrap_err(),
        FrontendError::BackendNotAvailable
    );
    let old = BlockingFrontEnd::new([BackendAddr::from(tls).taskit4()]).unwrap();
    assert!(old.work::<i64>("add", &(1, 1)).is_err());
    // The plain bind still serves clear text.
    assert_eq!(
        client(plain, None, None)
            .work::<i64>("add", &(2, 2))
            .unwrap(),
        4
    );
}

#[test]
fn a_host_whose_certificate_another_ca_signed_is_refused() {
    let dir = TempDir::new("tls-wrong-ca");
    let ca = Ca::new("test CA");
    let other = Ca::new("another CA");
    let server = ca.issue(&dir, "server", false);
    let host = tls_host(&server, &[]);
    let tls = host.tls;
    let fe = client(tls, Some(trusting(other.write(&dir, "other"))), None);
    match fe.work::<i64>("add", &(1, 1)) {
        Err(FrontendError::Tls { message, .. }) => {
            assert!(message.contains("UnknownIssuer"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mutual_tls_serves_only_clients_with_a_certificate_from_its_ca() {
    let dir = TempDir::new("tls-mutual");
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let stranger = Ca::new("stranger CA");
    let server = ca.issue(&dir, "server", false);
    let client_ca = clients.write(&dir, "clients");
    let host = tls_host(&server, &["--tls-client-ca", client_ca.to_str().unwrap()]);
    let tls = host.tls;
    let ca_file = ca.write(&dir, "ca");

    let with = |identity: Option<(PathBuf, PathBuf)>| {
        let options = ClientTlsOptions {
            identity,
            ..trusting(ca_file.clone())
        };
        client(tls, Some(options), None).work::<i64>("add", &(3, 4))
    };
    assert_eq!(with(Some(clients.issue(&dir, "client", true))).unwrap(), 7);
    for (label, identity) in [
        ("no certificate", None),
        ("a stranger's", Some(stranger.issue(&dir, "stranger", true))),
    ] {
        match with(identity) {
            Err(FrontendError::Tls { .. }) | Err(FrontendError::BackendNotAvailable) => {}
            other => panic!("{label}: {other:?}"),
        }
    }
}

#[test]
fn the_call_token_refuses_callers_without_it() {
    let dir = TempDir::new("tls-token");
    let token = private_token_file(&dir, "call-s3cret");
    let plugins = demo_dir("token-plugins");
    let mut host = HostProcess::start(&[
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--call-token-file",
        token.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&mut host);
    let addr = host.ready();
    assert_eq!(
        client(addr, None, Some("call-s3cret"))
            .work::<i64>("add", &(5, 5))
            .unwrap(),
        10
    );
    for presented in [None, Some("call-s3creT"), Some("")] {
        let err = client(addr, None, presented)
            .work::<Value>("add", &(5, 5))
            .unwrap_err();
        assert_eq!(
            err.remote_type(),
            Some(kind::UNAUTHORIZED),
            "{presented:?}: {err:?}"
        );
    }
    // Signals too, and TaskIt 4.0 calls, which cannot carry it.
    let err = client(addr, None, None).tasks(addr).unwrap_err();
    assert_eq!(err.remote_type(), Some(kind::UNAUTHORIZED), "{err:?}");
    let old = BlockingFrontEnd::new([BackendAddr::from(addr).taskit4()]).unwrap();
    let err = old.work::<Value>("add", &(5, 5)).unwrap_err();
    assert_eq!(err.remote_type(), Some(kind::UNAUTHORIZED), "{err:?}");
    // The two wrong tokens closed their connections, and are counted.
    let (_, text) = http(metrics, "GET", "/metrics");
    assert!(
        text.contains("taskit_connections_refused_total{reason=\"call_token\"} 2\n"),
        "{text}"
    );
}

#[test]
fn the_certificate_is_read_again_on_sighup() {
    let dir = TempDir::new("tls-reload");
    let first = Ca::new("first CA");
    let second = Ca::new("second CA");
    let server = first.issue(&dir, "server", false);
    let mut host = tls_host(&server, &[]);
    let tls = host.tls;
    let (first_ca, second_ca) = (first.write(&dir, "first"), second.write(&dir, "second"));
    assert!(client(tls, Some(trusting(first_ca.clone())), None)
        .work::<i64>("add", &(1, 1))
        .is_ok());
    // The files replaced by a certificate of the second CA, then SIGHUP.
    second.issue(&dir, "server", false);
    // SAFETY: a signal to our own child.
    assert_eq!(
        unsafe { libc::kill(host.host.pid() as libc::pid_t, libc::SIGHUP) },
        0
    );
    host.host
        .expect_line(&["SIGHUP: TLS certificate and key read again"]);
    assert_eq!(
        client(tls, Some(trusting(second_ca)), None)
            .work::<i64>("add", &(2, 2))
            .unwrap(),
        4
    );
    assert!(matches!(
        client(tls, Some(trusting(first_ca)), None).work::<i64>("add", &(1, 1)),
        Err(FrontendError::Tls { .. })
    ));
}

#[test]
fn taskit4_off_serves_the_native_protocol_alone() {
    let (_host, addr) = HostProcess::serving(demo_dir("no-taskit4").path(), &["--taskit4", "off"]);
    assert_eq!(
        client(addr, None, None)
            .work::<i64>("add", &(1, 2))
            .unwrap(),
        3
    );
    let old = BlockingFrontEnd::new([BackendAddr::from(addr).taskit4()]).unwrap();
    assert!(old.work::<i64>("add", &(1, 2)).is_err());
}

#[test]
fn the_host_warns_of_a_bind_beyond_loopback_that_serves_anyone_in_clear_text() {
    let dir = demo_dir("open-bind");
    let mut host = HostProcess::start_without_bind(&[
        "--plugins",
        dir.path().to_str().unwrap(),
        "--bind",
        "0.0.0.0:0",
    ]);
    host.expect_line(&["WARN", "serving calls in clear text beyond loopback"]);
    host.expect_line(&["WARN", "serving calls to anyone who can connect"]);
    host.ready();
}

#[test]
fn connections_silent_in_their_handshake_give_way_to_a_new_one() {
    let dir = TempDir::new("tls-silent");
    let ca = Ca::new("test CA");
    let server = ca.issue(&dir, "server", false);
    let host = tls_host(&server, &["--max-connections", "4"]);
    // Four connections to the TLS port that never start their handshake
    // (the plain bind's listener takes no slot).
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(host.tls).unwrap())
        .collect();
    let fe = client(host.tls, Some(trusting(ca.write(&dir, "ca"))), None);
    assert_eq!(fe.work::<i64>("add", &(2, 3)).unwrap(), 5);
    drop(silent);
}

#[test]
fn taskitctl_checks_the_hosts_behind_a_name_against_the_name() {
    let dir = TempDir::new("tls-ctl-dns");
    let ca = Ca::new("test CA");
    // For the name only: an address would not match it.
    let server = ca.issue_for(&dir, "server", false, false);
    let host = tls_host(&server, &[]);
    let ca_file = ca.write(&dir, "ca");
    let out = std::process::Command::new(built().join("taskitctl"))
        .args(["status", "dns:localhost", &host.tls.port().to_string()])
        .args(["--tls-ca", ca_file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("127.0.0.1:{} --> up", host.tls.port())),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
