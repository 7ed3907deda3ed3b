//! The in-process tools: log layers, resync from async code.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskit_harness::wait_until;
use taskit_plugin_api::log::{self, node, FileLogger, Level, NullLogger, OutToLog, Splitter};
use taskit_plugin_api::resync::{Mediator, ResyncError, Resyncer};
use tracing_subscriber::layer::SubscriberExt;

/// A `Write` into shared memory, counting flushes.
#[derive(Clone, Default)]
struct Buf {
    bytes: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<Mutex<usize>>,
}

impl Buf {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.bytes.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn messages(&self) -> Vec<String> {
        self.lines()
            .iter()
            .map(|l| {
                l.split_once('\t')
                    .map(|(_, m)| m.to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
    fn flushes(&self) -> usize {
        *self.flushes.lock().unwrap()
    }
}

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.bytes.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
}

#[test]
fn the_write_adapter_splits_lines_and_buffers_partial_ones() {
    let out = Buf::default();
    let subscriber = tracing_subscriber::registry().with(FileLogger::new(out.clone(), 0));
    tracing::subscriber::with_default(subscriber, || {
        let mut w = OutToLog::new(Level::Info);
        write!(w, "one\ntw").unwrap();
        assert_eq!(out.messages(), vec!["one"], "the partial line waits");
        w.flush().unwrap();
        assert_eq!(out.messages(), vec!["one"], "flush does not cut a line");
        write!(w, "o\nthree\n\nfo").unwrap();
        assert_eq!(out.messages(), vec!["one", "two", "three", ""]);
        drop(w);
        assert_eq!(
            out.messages(),
            vec!["one", "two", "three", "", "fo"],
            "the rest is logged on drop"
        );
        let mut e = OutToLog::errors();
        writeln!(e, "bad").unwrap();
    });
    let lines = out.lines();
    assert!(lines[0].starts_with("INFO ("), "{}", lines[0]);
    assert!(lines[5].starts_with("ERROR ("), "{}", lines[5]);
}

#[test]
fn a_splitter_sends_one_record_to_every_output() {
    let (a, b, c) = (Buf::default(), Buf::default(), Buf::default());
    let split = Splitter::new(vec![
        Box::new(a.clone()),
        Box::new(b.clone()),
        Box::new(c.clone()),
    ]);
    let dispatch =
        tracing::Dispatch::new(tracing_subscriber::registry().with(FileLogger::new(split, 1)));
    tracing::dispatcher::with_default(&dispatch, || log::log(Level::Important, "to all"));
    for out in [&a, &b, &c] {
        assert_eq!(out.messages(), vec!["to all"]);
        assert!(out.lines()[0].starts_with("IMPORTANT ("));
        assert_eq!(out.flushes(), 1, "flushed after its one line");
    }
}

#[test]
fn a_file_logger_flushes_by_its_policy() {
    let every_two = Buf::default();
    let never = Buf::default();
    {
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::registry()
                .with(FileLogger::new(every_two.clone(), 2))
                .with(FileLogger::new(never.clone(), 0)),
        );
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..5 {
                log::log(Level::Info, &format!("line {i}"));
            }
        });
        assert_eq!(every_two.flushes(), 2, "after lines 2 and 4");
        assert_eq!(never.flushes(), 0);
        assert_eq!(never.lines().len(), 5);
    }
    // Dropping the subscriber drops the loggers, which flush what is left.
    // (Another test's thread may hold the dispatcher a moment longer while
    // tracing rebuilds its callsites' interest: the last drop may be
    // theirs.)
    wait_until("the loggers flushed as they were dropped", || {
        every_two.flushes() == 3 && never.flushes() == 1
    });
}

#[test]
fn filtering_trees_forward_allowed_levels_to_their_children() {
    let errors_only = Buf::default();
    let info_and_errors = Buf::default();
    let everything = Buf::default();
    let tree = node(
        vec![
            node(
                vec![Box::new(FileLogger::new(errors_only.clone(), 0))],
                Some(&[Level::Error]),
            ),
            Box::new(FileLogger::new(info_and_errors.clone(), 0)),
        ],
        Some(&[Level::Info, Level::Error]),
    );
    let subscriber = tracing_subscriber::registry()
        .with(tree)
        .with(FileLogger::new(everything.clone(), 0))
        .with(NullLogger);
    tracing::subscriber::with_default(subscriber, || {
        log::log(Level::Debug, "d");
        log::log(Level::Info, "i");
        log::log(Level::Important, "!");
        log::log(Level::Error, "e");
        // Plain tracing events are TaskIt records too.
        tracing::warn!("a warning is IMPORTANT");
    });
    assert_eq!(errors_only.messages(), vec!["e"]);
    assert_eq!(info_and_errors.messages(), vec!["i", "e"]);
    assert_eq!(
        everything.messages(),
        vec!["d", "i", "!", "e", "a warning is IMPORTANT"]
    );
    assert!(everything.lines()[4].starts_with("IMPORTANT"));
}

#[test]
fn the_null_logger_keeps_nothing() {
    let subscriber = tracing_subscriber::registry().with(NullLogger);
    tracing::subscriber::with_default(subscriber, || log::log(Level::Error, "gone"));
}

#[test]
fn a_mediator_is_awaitable_from_async_code_and_waitable_from_threads() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m: Mediator<String, String> = Mediator::new();
    let producer = m.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        producer.set_result("from a thread".into()).unwrap();
    });
    assert_eq!(rt.block_on(m.wait()), Ok("from a thread".into()));
    assert_eq!(rt.block_on(m.wait()), Err(ResyncError::Taken));

    // A timeout from async code is the runtime's; the result is not lost.
    let m: Mediator<u8, ()> = Mediator::new();
    let timed_out =
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(20), m.wait()).await });
    assert!(timed_out.is_err());
    m.set_result(1).unwrap();
    assert_eq!(m.get(None), Ok(1));
}

#[test]
fn a_resyncer_overlaps_other_work_with_a_running_call() {
    let slow: Resyncer<u64, String> = Resyncer::start(|| {
        std::thread::sleep(Duration::from_millis(100));
        Ok(42)
    });
    // Other work meanwhile.
    let here: u64 = (1..=10).sum();
    assert!(!slow.is_done());
    assert_eq!(slow.get(None), Ok(42));
    assert_eq!(here, 55);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r: Resyncer<u8, ()> = Resyncer::start(|| Ok(9));
    assert_eq!(rt.block_on(r.wait()), Ok(9));
}

#[test]
fn a_file_logger_whose_writer_logs_does_not_deadlock() {
    let out = Buf::default();
    let looped = Splitter::new(vec![
        Box::new(out.clone()),
        Box::new(OutToLog::new(Level::Info)),
    ]);
    let logger = FileLogger::new(looped, 1);
    let flush = logger.flush_handle();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(logger));
    tracing::dispatcher::with_default(&dispatch, || {
        log::log(Level::Info, "once");
        log::log(Level::Info, "twice");
    });
    assert_eq!(out.messages(), vec!["once", "twice"]);
    let before = out.flushes();
    flush.flush().unwrap();
    assert_eq!(out.flushes(), before + 1);
}
