//! The frontend of the `worker` example: the ways to call a task, status,
//! remote errors, a message long enough for several FirstBytes articles,
//! then stopping the worker (only the worker: a host serving plugins on
//! the port is left running).
//!
//! ```sh
//! cargo run --example worker &
//! cargo run --example main -- 127.0.0.1:54543
//! ```

use std::sync::mpsc;
use std::time::Duration;

use taskit_plugin_api::frontend::{BackendAddr, BlockingFrontEnd, FrontendError};
use taskit_plugin_api::OnError;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: BackendAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:54543".into())
        .parse()?;
    let fe = BlockingFrontEnd::new([addr.clone()])?;

    // Wait for the result.
    let sum: i64 = fe.work("add", &(4, 4))?;
    println!("work: add(4, 4) = {sum}");

    // A callback, on another thread.
    let (tx, rx) = mpsc::channel();
    fe.callback(
        "wait-double",
        (100u64,),
        move |v: u64| tx.send(v).unwrap(),
        OnError::Print,
    );
    println!(
        "callback: wait-double(100) = {}",
        rx.recv_timeout(Duration::from_secs(30))?
    );

    // Fire and forget.
    fe.ignore("wait-double", (50u64,));
    println!("ignore: sent wait-double(50)");

    // The backend's count of running tasks (this status call included),
    // and this client's own count.
    println!(
        "status: {} running on the worker",
        fe.get_tasks(addr.clone())?
    );
    fe.wait_idle(Duration::from_secs(30));
    println!("client count: {:?}", fe.frontend().client_counts()[0].1);

    // Remote errors come back with their type and args.
    match fe.work::<()>("get-error", &()) {
        Err(FrontendError::BackendProcessing { kind, args }) => println!("error: {kind} {args:?}"),
        other => println!("unexpected: {other:?}"),
    }

    // 6000 characters: three FirstBytes articles over the TaskIt 4.0 protocol.
    let long = "x".repeat(6000);
    let compat = BlockingFrontEnd::new([addr.clone().taskit4()])?;
    let back: String = compat.work("echo", &(long.as_str(),))?;
    println!(
        "long message: echoed {} characters over taskit4",
        back.len()
    );

    // Only the worker example is stopped (it serves its own functions,
    // listed as "embedded"): a host serving plugins there is left alone.
    let plugins = fe.tasks(addr.clone())?;
    if plugins.iter().all(|p| p.name == "embedded") {
        fe.send_stop(addr)?;
        println!("stop: sent");
    } else {
        println!("stop: not sent ({addr} serves plugins: it is not the worker example)");
    }
    Ok(())
}
