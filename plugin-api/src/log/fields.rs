//! Turning an event's fields into one line of text.

use std::fmt::{self, Write as _};

use tracing_core::field::{Field, Visit};

/// An event's fields as `message key=value …`.
#[derive(Default)]
pub(crate) struct Message(pub String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = if self.0.is_empty() {
                write!(self.0, "{value:?}")
            } else {
                let rest = std::mem::take(&mut self.0);
                write!(self.0, "{value:?} {rest}")
            };
        } else {
            let sep = if self.0.is_empty() { "" } else { " " };
            let _ = write!(self.0, "{sep}{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}
