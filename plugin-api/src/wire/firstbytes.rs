//! TaskIt 4.0's FirstBytes framing.
//!
//! A message is cut into articles; each is a 5-byte ASCII header, `1` (more
//! follow) or `0` (last), then the payload length as 4 lowercase hex digits,
//! then the payload. Senders cut at 2048 bytes.

use super::WireError;

/// The payload size senders cut messages at.
pub const ARTICLE_SIZE: usize = 2048;
/// Bytes in an article header.
pub const HEADER_LEN: usize = 5;

/// Frames `payload` as one message. Unlike the original sender, which never
/// closes a message whose length is a multiple of 2048 bytes (its peer then
/// waits forever), the last article is always flagged `0`; an empty message
/// is the single empty article `00000`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let articles = payload.len().div_ceil(ARTICLE_SIZE).max(1);
    let mut out = Vec::with_capacity(payload.len() + articles * HEADER_LEN);
    if payload.is_empty() {
        out.extend_from_slice(b"00000");
        return out;
    }
    let mut chunks = payload.chunks(ARTICLE_SIZE).peekable();
    while let Some(chunk) = chunks.next() {
        let flag = if chunks.peek().is_some() { b'1' } else { b'0' };
        out.push(flag);
        out.extend_from_slice(format!("{:04x}", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Reads one message incrementally: feed it bytes as they arrive.
///
/// Memory grows only with payload bytes actually received, and a declared
/// article length that would take the message over `max` is refused as soon
/// as its header is read.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    message: Vec<u8>,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload bytes still expected in the current article, and whether it
    /// is the last one.
    payload: Option<(usize, bool)>,
    done: bool,
}

impl Decoder {
    /// A decoder refusing messages over `max` bytes of payload.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            message: Vec::new(),
            header: [0; HEADER_LEN],
            header_len: 0,
            payload: None,
            done: false,
        }
    }

    /// Consumes bytes from the front of `input`; returns how many it used.
    /// Once [`is_done`](Self::is_done), it uses none.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<usize, WireError> {
        let start = input.len();
        while !self.done && !input.is_empty() {
            match self.payload {
                None => {
                    let take = (HEADER_LEN - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&input[..take]);
                    self.header_len += take;
                    input = &input[take..];
                    if self.header_len == HEADER_LEN {
                        let (len, last) = parse_header(&self.header)?;
                        let size = self.message.len() + len;
                        if size > self.max {
                            return Err(WireError::TooLarge {
                                size: size as u64,
                                max: self.max as u64,
                            });
                        }
                        self.header_len = 0;
                        self.payload = Some((len, last));
                    }
                }
                Some((remaining, last)) => {
                    let take = remaining.min(input.len());
                    self.message.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.payload = Some((remaining - take, last));
                }
            }
            if let Some((0, last)) = self.payload {
                self.payload = None;
                self.done = last;
            }
        }
        Ok(start - input.len())
    }

    /// Whether a whole message has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether nothing at all has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.message.is_empty() && self.header_len == 0 && self.payload.is_none() && !self.done
    }

    /// Whether the last article read was a whole continuation article
    /// (`1`) and nothing of the next one has arrived. The original TaskIt
    /// 4.0 sender never closes a message whose length is a multiple of its
    /// article size: it stops here and waits for the reply.
    pub fn awaits_closing_article(&self) -> bool {
        !self.done && self.payload.is_none() && self.header_len == 0 && !self.message.is_empty()
    }

    /// The message read so far.
    pub fn message_so_far(&self) -> &[u8] {
        &self.message
    }

    /// The message read so far (all of it once done).
    pub fn into_message(self) -> Vec<u8> {
        self.message
    }
}

/// Reads an article header: its payload length and whether it is the last.
fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(usize, bool), WireError> {
    let last = match header[0] {
        b'0' => true,
        b'1' => false,
        other => return Err(WireError::BadArticleFlag(other)),
    };
    let mut len = 0usize;
    for &b in &header[1..] {
        let digit = (b as char).to_digit(16).ok_or_else(|| {
            WireError::BadArticleLength(String::from_utf8_lossy(&header[1..]).into_owned())
        })?;
        len = len * 16 + digit as usize;
    }
    Ok((len, last))
}

/// Decodes one whole message held in `input` (for tests and fuzzing).
/// Returns the message and the bytes used, or `None` if `input` ends first.
pub fn decode(input: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, WireError> {
    let mut decoder = Decoder::new(max);
    let used = decoder.feed(input)?;
    Ok(decoder.is_done().then(|| (decoder.into_message(), used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_message_is_one_closing_article() {
        assert_eq!(encode(b"hello"), b"00005hello");
        // The exchange in docs/protocol.md.
        assert_eq!(
            encode(br#"["add", [4, 4], {}]"#),
            br#"00013["add", [4, 4], {}]"#
        );
        assert_eq!(encode(br#"["success",8]"#), br#"0000d["success",8]"#);
        assert_eq!(encode(b""), b"00000");
    }

    #[test]
    fn long_messages_are_cut_at_2048_and_always_closed() {
        let msg = vec![b'x'; 5000];
        let enc = encode(&msg);
        assert_eq!(&enc[..5], b"10800");
        assert_eq!(&enc[2053..2058], b"10800");
        assert_eq!(&enc[4106..4111], b"00388");
        let exact = vec![b'y'; 4096];
        let enc = encode(&exact);
        assert_eq!(
            &enc[2053..2058],
            b"00800",
            "the last full article closes the message"
        );
        for m in [msg, exact, b"{}".to_vec()] {
            let (back, used) = decode(&encode(&m), 1 << 20).unwrap().unwrap();
            assert_eq!((back, used), (m.clone(), encode(&m).len()));
        }
    }

    #[test]
    fn accepts_an_empty_closing_article_and_byte_by_byte_input() {
        let mut wire = b"10003abc".to_vec();
        wire.extend_from_slice(b"00000");
        let mut d = Decoder::new(100);
        for b in &wire {
            assert_eq!(d.feed(std::slice::from_ref(b)).unwrap(), 1);
        }
        assert!(d.is_done());
        assert_eq!(d.into_message(), b"abc");
    }

    #[test]
    fn corruption_and_oversize_are_refused() {
        assert_eq!(
            decode(b"20003abc", 100),
            Err(WireError::BadArticleFlag(b'2'))
        );
        assert!(matches!(
            decode(b"0zz03abc", 100),
            Err(WireError::BadArticleLength(_))
        ));
        assert!(matches!(
            decode(b"0ffff", 100),
            Err(WireError::TooLarge {
                size: 65535,
                max: 100
            })
        ));
        assert_eq!(decode(b"00005ab", 100), Ok(None));
    }
}
