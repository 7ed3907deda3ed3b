//! TaskIt's loggers on `tracing`: a filtering tree, a file logger with a
//! flush policy, a splitter, standard output captured as log records, and
//! the null logger.
//!
//! ```sh
//! cargo run --example log
//! ```

use std::io::Write;

use taskit_plugin_api::log::{self, node, FileLogger, Level, NullLogger, OutToLog, Splitter};
use tracing_subscriber::layer::SubscriberExt;

fn main() -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("taskit-log-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let errors_path = dir.join("errors.log");
    let errors_file = std::fs::File::create(&errors_path)?;

    // Everything to standard output; ERROR and IMPORTANT also to a file and
    // to standard error at once (a splitter), flushed every line.
    let tree = node(
        vec![
            Box::new(FileLogger::new(std::io::stdout(), 1)),
            node(
                vec![Box::new(FileLogger::new(
                    Splitter::new(vec![Box::new(errors_file), Box::new(std::io::stderr())]),
                    1,
                ))],
                Some(&[Level::Error, Level::Important]),
            ),
        ],
        None,
    );
    let subscriber = tracing_subscriber::registry().with(tree).with(NullLogger);
    tracing::subscriber::with_default(subscriber, || {
        log::log(Level::Debug, "debugging detail");
        log::log(Level::Info, "an ordinary event");
        log::log(Level::Important, "worth noticing");
        log::log(Level::Error, "something failed");
        // Writes become records, line by line.
        let mut out = OutToLog::new(Level::Info);
        write!(out, "printed, then ").unwrap();
        writeln!(out, "logged as one line").unwrap();
    });
    println!("errors.log holds:");
    print!("{}", std::fs::read_to_string(&errors_path)?);
    std::fs::remove_dir_all(&dir)
}
