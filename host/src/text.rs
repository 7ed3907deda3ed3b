//! Text from outside (a peer, a plugin) made safe to log.

use std::fmt;

/// Shows a string with its control characters escaped (`\n`, `\r`, `\t`,
/// `\u{1b}`...), so a newline cannot forge a log line and an ANSI sequence
/// cannot rewrite a terminal. Everything else, quotes included, is shown
/// as it is.
pub(crate) struct Printable<'a>(pub(crate) &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Printable;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        let shown = Printable("a \"quoted\" line\nINFO forged\r\u{1b}[31mred\tend").to_string();
        assert_eq!(
            shown,
            "a \"quoted\" line\\nINFO forged\\r\\u{1b}[31mred\\tend"
        );
        assert_eq!(Printable("héllo ✓").to_string(), "héllo ✓");
    }
}
