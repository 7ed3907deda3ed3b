//! Port lists: `N`, `N,M,K`, `N-M` (inclusive), and any mix (`54543,54600-54602`).

use std::fmt;

/// A port spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPorts(pub String);

impl fmt::Display for BadPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadPorts {}

fn port(s: &str) -> Result<u16, BadPorts> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| BadPorts(format!("{s:?} is not a port number")))?;
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(BadPorts(format!("port {n} is out of range (1-65535)"))),
    }
}

/// Expands a port spec, in the order given, without duplicates.
pub fn expand(spec: &str) -> Result<Vec<u16>, BadPorts> {
    let mut out: Vec<u16> = Vec::new();
    for part in spec.split(',') {
        if part.trim().is_empty() {
            return Err(BadPorts(format!("empty port in {spec:?}")));
        }
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(part)?;
                (p, p)
            }
        };
        if first > last {
            return Err(BadPorts(format!(
                "port range {first}-{last} runs backwards (write {last}-{first})"
            )));
        }
        for p in first..=last {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_expand() {
        assert_eq!(expand("54543").unwrap(), vec![54543]);
        assert_eq!(expand("1,3,2").unwrap(), vec![1, 3, 2]);
        assert_eq!(expand("5-8").unwrap(), vec![5, 6, 7, 8]);
        assert_eq!(expand("9,5-7,6").unwrap(), vec![9, 5, 6, 7]);
        assert_eq!(expand("65535").unwrap(), vec![65535]);
    }

    #[test]
    fn bad_specs_say_why() {
        assert!(expand("10-5").unwrap_err().0.contains("runs backwards"));
        assert!(expand("abc")
            .unwrap_err()
            .0
            .contains("\"abc\" is not a port number"));
        assert!(expand("70000").unwrap_err().0.contains("out of range"));
        assert!(expand("0").unwrap_err().0.contains("out of range"));
        assert!(expand("1,,2").unwrap_err().0.contains("empty port"));
        assert!(expand("1-").unwrap_err().0.contains("not a port number"));
    }
}
