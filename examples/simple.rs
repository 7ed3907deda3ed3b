//! Local tasks: wrap a function, then wait for it, hand it callbacks, or
//! ignore it; with the three ways to treat an error (handle, print, silence).
//!
//! ```sh
//! cargo run --example simple
//! ```

use taskit_plugin_api::simple::{OnError, Task};

fn main() {
    let half = Task::new("half", |n: u32| {
        if n.is_multiple_of(2) {
            Ok(n / 2)
        } else {
            Err(format!("{n} is odd"))
        }
    });

    println!("work: half(10) = {:?}", half.work(10));
    println!("work: half(3) = {:?}", half.work(3));

    half.callback(8, |v| println!("callback: half(8) = {v}"), OnError::Print)
        .join()
        .unwrap();
    half.callback(
        5,
        |v| println!("callback: half(5) = {v}"),
        OnError::handle(|e| println!("callback: handled error: {e}")),
    )
    .join()
    .unwrap();
    // Printed to standard error (or the log, if a subscriber is set).
    half.callback(7, |_| {}, OnError::Print).join().unwrap();
    half.callback(9, |_| {}, OnError::Silence).join().unwrap();
    half.ignore(11).join().unwrap();
    println!("ignore: done");

    // Panics are errors too.
    let boom = Task::infallible("boom", |_: ()| -> u32 { panic!("boom") });
    println!("work: boom() = {:?}", boom.work(()));
}
