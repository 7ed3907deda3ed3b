//! Resync: hand results between threads, turn a callback back into a
//! blocking call, and overlap other work with a running call.
//!
//! ```sh
//! cargo run --example resync
//! ```

use std::time::Duration;

use taskit_plugin_api::resync::{Mediator, ResyncError, Resyncer};

/// An API that reports through a callback, on a thread of its own.
fn fetch_with_callback(
    key: &'static str,
    done: impl FnOnce(Result<String, String>) + Send + 'static,
) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        done(if key.is_empty() {
            Err("empty key".into())
        } else {
            Ok(key.to_uppercase())
        })
    });
}

fn main() {
    // Producer and consumer.
    let m: Mediator<u32, String> = Mediator::new();
    let producer = m.clone();
    std::thread::spawn(move || producer.set_result(42).unwrap());
    println!("hand-off: {:?}", m.get(None));

    // A callback API made blocking again.
    let m: Mediator<String, String> = Mediator::new();
    let p = m.clone();
    fetch_with_callback("taskit", move |r| {
        let _ = match r {
            Ok(v) => p.set_result(v),
            Err(e) => p.set_error(e),
        };
    });
    println!(
        "callback made blocking: {:?}",
        m.get(Some(Duration::from_secs(5)))
    );

    // Completed once only.
    let m: Mediator<u8, ()> = Mediator::new();
    m.set_result(1).unwrap();
    println!("second completion: {:?}", m.set_result(2));

    // A timeout, then the late result is still there.
    let m: Mediator<&str, ()> = Mediator::new();
    println!("timeout: {:?}", m.get(Some(Duration::from_millis(30))));
    m.set_result("late").unwrap();
    println!("after the timeout: {:?}", m.get(None));
    println!(
        "taken twice: {}",
        matches!(m.get(None), Err(ResyncError::Taken))
    );

    // Overlap work with a running call.
    let slow: Resyncer<u64, String> = Resyncer::start(|| {
        std::thread::sleep(Duration::from_millis(50));
        Ok((1..=1000).sum())
    });
    let meanwhile: u64 = (1..=10).product();
    println!("meanwhile: 10! = {meanwhile}");
    println!("resyncer: {:?}", slow.get(None));

    // And from async code.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r: Resyncer<&str, ()> = Resyncer::start(|| Ok("awaited"));
    println!("async: {:?}", rt.block_on(r.wait()));
}
