//! Decodes the parts of a DNS message `trace dns` shows (question name and type,
//! response code) from a bounded copy of the packet. Every read is bounds-checked: the
//! copy may be truncated, and the packet may be anything a process sent to port 53.

/// The fixed header.
const HEADER: usize = 12;
/// The longest name in wire form (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;
/// Compression pointers followed at most: a loop of pointers is malformed, not endless.
const MAX_POINTERS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Presentation form without the trailing dot (`www.example.com`, `.` for the root);
    /// bytes outside printable ASCII, dots and backslashes inside labels are escaped
    /// as in zone files (`\046`, `\\`).
    pub qname: String,
    pub qtype: u16,
    pub rcode: u8,
    pub is_response: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is shorter than the 12-byte header")]
    ShortHeader(usize),
    #[error("no question in the message")]
    NoQuestion,
    #[error("name runs past the {0} captured bytes")]
    Truncated(usize),
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("compression pointer loop or too many pointers")]
    PointerLoop,
    #[error("reserved label type 0x{0:02x}")]
    BadLabel(u8),
}

/// The first question of `message`, and the header's response code.
pub fn decode(message: &[u8]) -> Result<Question, DecodeError> {
    let header = message
        .get(..HEADER)
        .ok_or(DecodeError::ShortHeader(message.len()))?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if questions == 0 {
        return Err(DecodeError::NoQuestion);
    }
    let (qname, end) = read_name(message, HEADER)?;
    let qtype = message
        .get(end..end + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DecodeError::Truncated(message.len()))?;
    Ok(Question {
        qname,
        qtype,
        rcode: (flags & 0x0f) as u8,
        is_response: flags & 0x8000 != 0,
    })
}

/// A name starting at `start`; returns it and the offset just after it (after the first
/// pointer, if it was compressed).
fn read_name(message: &[u8], start: usize) -> Result<(String, usize), DecodeError> {
    let truncated = || DecodeError::Truncated(message.len());
    let mut name = String::new();
    let mut wire_len = 0usize;
    let mut pos = start;
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *message.get(pos).ok_or_else(truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                let end = end.unwrap_or(pos + 1);
                if name.is_empty() {
                    name.push('.');
                }
                return Ok((name, end));
            }
            0x00 => {
                let label = message
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or_else(truncated)?;
                wire_len += label.len() + 1;
                if wire_len > MAX_NAME {
                    return Err(DecodeError::NameTooLong);
                }
                if !name.is_empty() {
                    name.push('.');
                }
                push_label(&mut name, label);
                pos += 1 + label.len();
            }
            0xc0 => {
                let low = *message.get(pos + 1).ok_or_else(truncated)?;
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(DecodeError::PointerLoop);
                }
                end.get_or_insert(pos + 2);
                pos = usize::from(u16::from_be_bytes([len & 0x3f, low]));
            }
            _ => return Err(DecodeError::BadLabel(len)),
        }
    }
}

fn push_label(name: &mut String, label: &[u8]) {
    for &byte in label {
        match byte {
            b'.' | b'\\' => {
                name.push('\\');
                name.push(char::from(byte));
            }
            0x21..=0x7e => name.push(char::from(byte)),
            other => name.push_str(&format!("\\{other:03}")),
        }
    }
}

/// `A`, `AAAA`, ... for common types, `TYPE<n>` (RFC 3597) otherwise.
pub fn qtype_name(qtype: u16) -> String {
    match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        other => return format!("TYPE{other}"),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message(flags: u16, name: &[&[u8]], qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34];
        m.extend(flags.to_be_bytes());
        m.extend([0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name {
            m.push(label.len() as u8);
            m.extend(*label);
        }
        m.push(0);
        m.extend(qtype.to_be_bytes());
        m.extend([0, 1]);
        m
    }

    #[test]
    fn decodes_a_response() {
        let m = message(0x8183, &[b"nope", b"test", b"local"], 28);
        let q = decode(&m).unwrap();
        assert_eq!(q.qname, "nope.test.local");
        assert_eq!(q.qtype, 28);
        assert_eq!(q.rcode, 3);
        assert!(q.is_response);
        assert_eq!(qtype_name(q.qtype), "AAAA");
        assert_eq!(qtype_name(99), "TYPE99");
    }

    #[test]
    fn root_and_escapes() {
        assert_eq!(decode(&message(0, &[], 2)).unwrap().qname, ".");
        let q = decode(&message(0, &[b"a.b", b"c\\\x01"], 1)).unwrap();
        assert_eq!(q.qname, "a\\.b.c\\\\\\001");
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(decode(&[0; 5]), Err(DecodeError::ShortHeader(5)));
        let mut none = message(0, &[b"x"], 1);
        none[5] = 0;
        assert_eq!(decode(&none), Err(DecodeError::NoQuestion));
        let full = message(0, &[b"example", b"com"], 1);
        // Cut inside the name and inside the type.
        assert!(matches!(
            decode(&full[..16]),
            Err(DecodeError::Truncated(16))
        ));
        assert!(matches!(
            decode(&full[..full.len() - 3]),
            Err(DecodeError::Truncated(_))
        ));
        // A pointer to itself.
        let mut looped = full[..12].to_vec();
        looped.extend([0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(decode(&looped), Err(DecodeError::PointerLoop));
        let mut reserved = full[..12].to_vec();
        reserved.extend([0x80, 0, 0, 1, 0, 1]);
        assert_eq!(decode(&reserved), Err(DecodeError::BadLabel(0x80)));
        let long: Vec<&[u8]> = vec![&[b'a'; 63]; 5];
        assert_eq!(decode(&message(0, &long, 1)), Err(DecodeError::NameTooLong));
    }

    #[test]
    fn follows_a_compression_pointer() {
        // Question name "www" + pointer to "example.com" placed after the question.
        let mut m = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend([3, b'w', b'w', b'w', 0xc0, 22, 0, 1, 0, 1]);
        m.extend([7]);
        m.extend(b"example");
        m.extend([3]);
        m.extend(b"com");
        m.push(0);
        let q = decode(&m).unwrap();
        assert_eq!(q.qname, "www.example.com");
        assert_eq!(q.qtype, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any bytes at all: an answer or an error, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        /// Headers that claim a question, followed by anything, with pointers likely.
        #[test]
        fn never_panics_on_plausible_headers(
            tail in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(0xc0u8), Just(0u8), 1u8..64],
                0..280,
            ),
        ) {
            let mut m = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
            m.extend(tail);
            let _ = decode(&m);
        }

        /// Well-formed questions decode to the name and type that were encoded, and
        /// every truncation of them is an error, not a panic or a wrong answer.
        #[test]
        fn round_trips_and_truncations(
            labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..6),
            qtype in any::<u16>(),
            rcode in 0u16..16,
        ) {
            let raw: Vec<&[u8]> = labels.iter().map(std::string::String::as_bytes).collect();
            let m = message(0x8000 | rcode, &raw, qtype);
            let q = decode(&m).unwrap();
            prop_assert_eq!(q.qname, labels.join("."));
            prop_assert_eq!(q.qtype, qtype);
            prop_assert_eq!(u16::from(q.rcode), rcode);
            // The last 2 bytes are QCLASS, which the decoder does not need.
            for cut in 0..m.len() - 2 {
                prop_assert!(decode(&m[..cut]).is_err(), "cut at {}", cut);
            }
        }
    }
}
