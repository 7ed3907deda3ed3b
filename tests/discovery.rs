//! Backends behind a name (`dns:NAME:PORT`): real `taskit-host` processes
//! on distinct loopback addresses, found through a resolver the test
//! controls (and once through the system's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskit_harness::*;
use taskit_plugin_api::frontend::{BackendAddr, FrontEnd, FrontendConfig, FrontendError, Resolver};

/// What the test's resolver answers, and how often it was asked.
#[derive(Default)]
struct Zone {
    addrs: Mutex<Vec<SocketAddr>>,
    lookups: AtomicUsize,
}

impl Zone {
    fn set(&self, addrs: &[SocketAddr]) -> usize {
        let mut current = self.addrs.lock().unwrap();
        *current = addrs.to_vec();
        // Lookups numbered above this one see the new addresses.
        self.lookups.load(Ordering::SeqCst)
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

/// A frontend of `dns:taskit-test:PORT`, resolved by `zone` every `every`.
fn frontend(zone: &Arc<Zone>, port: u16, every: Duration) -> FrontEnd {
    let zone = Arc::clone(zone);
    let config = FrontendConfig {
        resolve_every: every,
        resolver: Some(Resolver::new(move |name, asked_port| {
            assert_eq!((name, asked_port), ("taskit-test", port));
            let addrs = zone.addrs.lock().unwrap();
            zone.lookups.fetch_add(1, Ordering::SeqCst);
            Ok(addrs.clone())
        })),
        ..FrontendConfig::default()
    };
    FrontEnd::with_config([BackendAddr::dns("taskit-test", port)], config)
}

/// A host serving the demo plugins on `ip:port` (port 0: any).
fn host_on(dir: &TempDir, ip: &str, port: u16) -> (HostProcess, SocketAddr) {
    let bind = format!("{ip}:{port}");
    let mut host = HostProcess::start_without_bind(&[
        "--plugins",
        dir.path().to_str().unwrap(),
        "--bind",
        &bind,
    ]);
    let addr = host.ready();
    (host, addr)
}

/// Hosts on 127.0.0.2, 127.0.0.3, … all on one port, as a name's
/// addresses are.
fn hosts(dir: &TempDir, n: u8) -> Vec<(HostProcess, SocketAddr)> {
    let first = host_on(dir, "127.0.0.2", 0);
    let port = first.1.port();
    let mut all = vec![first];
    for i in 1..n {
        all.push(host_on(dir, &format!("127.0.0.{}", 2 + i), port));
    }
    all
}

/// Calls this frontend answered from `addr`.
fn answered(fe: &FrontEnd, addr: SocketAddr) -> u64 {
    fe.routes()
        .iter()
        .find(|r| r.addr == BackendAddr::from(addr))
        .map_or(0, |r| r.answered)
}

fn routed(fe: &FrontEnd) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = fe
        .routes()
        .iter()
        .map(|r| format!("{}", r.addr).parse().unwrap())
        .collect();
    addrs.sort();
    addrs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_spreads_calls_over_every_address_behind_it() {
    let dir = demo_dir("dns-spread");
    let hosts = hosts(&dir, 3);
    let zone = Arc::new(Zone::default());
    let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.1).collect();
    zone.set(&addrs);
    let fe = frontend(&zone, addrs[0].port(), Duration::from_secs(3600));
    assert!(fe.routes().is_empty(), "nothing is resolved before a call");
    let calls: Vec<_> = (0..300i64)
        .map(|i| {
            let fe = fe.clone();
            tokio::spawn(
                async move { fe.call::<i64>("wait-double", &(5u64 + i as u64 % 2,)).await },
            )
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(routed(&fe), addrs);
    for addr in &addrs {
        assert!(
            answered(&fe, *addr) > 0,
            "{addr} took no call: {:?}",
            fe.routes()
        );
    }
    assert_eq!(
        fe.backends(),
        vec![BackendAddr::dns("taskit-test", addrs[0].port())]
    );
    assert_eq!(zone.lookups(), 1, "one lookup, made by the first call");
}

/// Calls in a loop from `n` tasks until `stop`; every failure is kept.
fn keep_calling(
    fe: &FrontEnd,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..n)
        .map(|_| {
            let (fe, stop) = (fe.clone(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    match fe.call::<u64>("wait-double", &(3u64,)).await {
                        Ok(6) => {}
                        other => failures.push(format!("{other:?}")),
                    }
                }
                failures
            })
        })
        .collect()
}

/// Polls `cond` from async code (see [`wait_until`]).
fn wait(what: &str, cond: impl FnMut() -> bool) {
    tokio::task::block_in_place(|| wait_until(what, cond))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_join_and_leave_a_name_without_a_failed_call() {
    let dir = demo_dir("dns-change");
    let mut hosts = hosts(&dir, 3);
    let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.1).collect();
    let zone = Arc::new(Zone::default());
    zone.set(&addrs[..2]);
    let fe = frontend(&zone, addrs[0].port(), Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let callers = keep_calling(&fe, 8, &stop);

    // A third host joins: it takes calls after at most two lookups.
    wait("calls on both first hosts", || {
        addrs[..2].iter().all(|a| answered(&fe, *a) > 0)
    });
    let before = zone.set(&addrs);
    wait("the new host answers", || answered(&fe, addrs[2]) > 0);
    let lookups = zone.lookups() - before;
    assert!(
        lookups <= 2,
        "{lookups} lookups before the new host took a call"
    );

    // The first leaves: it takes no new call, answers those it has, and
    // its connection closes; nothing fails.
    zone.set(&addrs[1..]);
    wait("the first host leaves the routes", || {
        routed(&fe) == addrs[1..].to_vec()
    });
    let (gone, gone_addr) = &mut hosts[0];
    let status = FrontEnd::new([*gone_addr]);
    let mut running = String::new();
    for _ in 0..2000 {
        running = status.get_tasks(*gone_addr).await.unwrap();
        if running == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(running, "1", "calls still running on the host that left");
    status.send_stop(*gone_addr).await.unwrap();
    tokio::task::block_in_place(|| gone.wait_exit());
    let after = (answered(&fe, addrs[1]), answered(&fe, addrs[2]));
    wait("calls go on on the others", || {
        answered(&fe, addrs[1]) > after.0 + 20 && answered(&fe, addrs[2]) > after.1 + 20
    });

    stop.store(true, Ordering::Release);
    let mut failures = Vec::new();
    for caller in callers {
        failures.extend(caller.await.unwrap());
    }
    assert!(failures.is_empty(), "failed calls: {failures:?}");
}

/// Two hosts, the name answering the first: a frontend that resolves it
/// only when no backend answers (not again for an hour) makes a call there;
/// then the first host stops (`<stop>`, and it exits) and the name answers
/// the second. The hosts, their addresses, the zone and the frontend.
async fn first_host_replaced(
    dir: &TempDir,
) -> (
    Vec<(HostProcess, SocketAddr)>,
    Vec<SocketAddr>,
    Arc<Zone>,
    FrontEnd,
) {
    let mut hosts = hosts(dir, 2);
    let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.1).collect();
    let zone = Arc::new(Zone::default());
    zone.set(&addrs[..1]);
    let fe = frontend(&zone, addrs[0].port(), Duration::from_secs(3600));
    assert_eq!(fe.call::<i64>("add", &(1, 2)).await.unwrap(), 3);
    let (first, first_addr) = &mut hosts[0];
    FrontEnd::new([*first_addr])
        .send_stop(*first_addr)
        .await
        .unwrap();
    tokio::task::block_in_place(|| first.wait_exit());
    zone.set(&addrs[1..]);
    (hosts, addrs, zone, fe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_resolved_again_at_once_when_no_backend_answers() {
    let dir = demo_dir("dns-all-gone");
    let (_hosts, addrs, zone, fe) = first_host_replaced(&dir).await;
    assert_eq!(fe.call::<i64>("add", &(2, 3)).await.unwrap(), 5);
    assert_eq!(routed(&fe), addrs[1..].to_vec());
    assert_eq!(zone.lookups(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_keeps_the_backends_found_before() {
    let dir = demo_dir("dns-keep");
    let hosts = hosts(&dir, 1);
    let addr = hosts[0].1;
    let fails = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicUsize::new(0));
    let (f, l) = (Arc::clone(&fails), Arc::clone(&lookups));
    let config = FrontendConfig {
        resolve_every: Duration::from_millis(1),
        resolver: Some(Resolver::new(move |_, _| {
            l.fetch_add(1, Ordering::SeqCst);
            if f.load(Ordering::SeqCst) {
                Err(std::io::Error::other("resolver down"))
            } else {
                Ok(vec![addr])
            }
        })),
        ..FrontendConfig::default()
    };
    let fe = FrontEnd::with_config([BackendAddr::dns("taskit-test", addr.port())], config);
    assert_eq!(fe.call::<i64>("add", &(1, 1)).await.unwrap(), 2);
    fails.store(true, Ordering::SeqCst);
    let seen = lookups.load(Ordering::SeqCst);
    let mut i = 0;
    while lookups.load(Ordering::SeqCst) < seen + 3 {
        assert_eq!(fe.call::<i64>("add", &(i, 1)).await.unwrap(), i + 1);
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(routed(&fe), vec![addr]);
    let err = fe
        .resolve_backends(BackendAddr::dns("taskit-test", addr.port()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("resolver down"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_resolver_finds_every_address_of_localhost() {
    let dir = demo_dir("dns-localhost");
    // Whatever this machine's resolver gives for localhost (127.0.0.1, and
    // ::1 where it is listed): one host listening on all of them.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let mut system: Vec<SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
            .unwrap()
            .collect();
    system.sort();
    system.dedup();
    assert!(!system.is_empty());
    let mut args = vec![
        "--plugins".to_owned(),
        dir.path().to_str().unwrap().to_owned(),
    ];
    for addr in &system {
        args.extend(["--bind".to_owned(), addr.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut host = HostProcess::start_without_bind(&args);
    host.ready();
    for fe in [
        FrontEnd::new([format!("dns:localhost:{port}")]),
        FrontEnd::with_config(
            [format!("localhost:{port}")],
            FrontendConfig {
                discover_names: true,
                ..FrontendConfig::default()
            },
        ),
    ] {
        for i in 0..(4 * system.len() as i64) {
            assert_eq!(fe.call::<i64>("add", &(i, i)).await.unwrap(), 2 * i);
        }
        assert_eq!(routed(&fe), system);
        for addr in &system {
            assert!(answered(&fe, *addr) > 0, "{addr}: {:?}", fe.routes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_all_find_the_backends_that_replaced_the_gone_ones() {
    let dir = demo_dir("dns-concurrent");
    let (_hosts, _, _, fe) = first_host_replaced(&dir).await;
    // Each finds the old host gone; one lookup finds the new one, and
    // every call uses it, whichever call made the lookup.
    let calls: Vec<_> = (0..16i64)
        .map(|i| {
            let fe = fe.clone();
            tokio::spawn(async move { fe.call::<i64>("add", &(i, 1)).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), i as i64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_did_not_resolve_is_looked_up_again_by_the_next_call() {
    let dir = demo_dir("dns-retry");
    let hosts = hosts(&dir, 1);
    let addr = hosts[0].1;
    let down = Arc::new(AtomicBool::new(true));
    let d = Arc::clone(&down);
    let config = FrontendConfig {
        resolve_every: Duration::from_secs(3600),
        resolver: Some(Resolver::new(move |_, _| {
            if d.load(Ordering::SeqCst) {
                Err(std::io::Error::other("resolver down"))
            } else {
                Ok(vec![addr])
            }
        })),
        ..FrontendConfig::default()
    };
    let fe = FrontEnd::with_config([BackendAddr::dns("taskit-test", addr.port())], config);
    match fe.call::<i64>("add", &(1, 1)).await {
        Err(FrontendError::Resolve { name, message }) => {
            assert_eq!(name, format!("dns:taskit-test:{}", addr.port()));
            assert!(message.contains("resolver down"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    down.store(false, Ordering::SeqCst);
    assert_eq!(fe.call::<i64>("add", &(2, 2)).await.unwrap(), 4);
}
