//! Pairing codes: `42-amber-castle-otter`. The number is the nameplate, which tells the
//! joiner where to look (it is announced, not secret); the three words (24 bits) are the
//! password the PAKE turns into a key. An online guess costs the guesser one of the invite's
//! few attempts, so three attempts give a guesser a 3 in 16.7 million chance.

use std::fmt;
use std::str::FromStr;

use crate::words::WORDS;

/// Highest nameplate.
pub const MAX_NAMEPLATE: u16 = 999;

/// A pairing code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Code {
    nameplate: u16,
    words: [u8; 3],
}

impl Code {
    /// A fresh random code.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 5];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        let nameplate = 1 + u16::from_le_bytes([bytes[0], bytes[1]]) % MAX_NAMEPLATE;
        Self { nameplate, words: [bytes[2], bytes[3], bytes[4]] }
    }

    /// The nameplate.
    pub fn nameplate(&self) -> u16 {
        self.nameplate
    }

    /// The secret the PAKE uses: the whole code, with a context.
    pub fn password(&self) -> Vec<u8> {
        format!("warren pairing code v1\0{self}").into_bytes()
    }

    /// The library UUID an inviter announces on the LAN while its invite is open, so that a
    /// joiner finds it by the nameplate alone (anyone can announce it too: the PAKE decides).
    pub fn rendezvous(nameplate: u16) -> uuid::Uuid {
        let hash = blake3::derive_key("warren pairing rendezvous v1", &nameplate.to_le_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.words.map(|w| WORDS[usize::from(w)]);
        write!(f, "{}-{a}-{b}-{c}", self.nameplate)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The words are the secret: debug output shows the nameplate only.
        write!(f, "Code({}-…)", self.nameplate)
    }
}

/// Why a code does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not `NUMBER-word-word-word`.
    #[error("a pairing code looks like 42-amber-castle-otter")]
    Shape,
    /// The number is not 1 to 999.
    #[error("the code's number must be 1 to {MAX_NAMEPLATE}")]
    Nameplate,
    /// A word is not in the list.
    #[error("{0:?} is not a pairing word (check the spelling)")]
    Word(String),
}

impl FromStr for Code {
    type Err = CodeError;

    fn from_str(s: &str) -> Result<Self, CodeError> {
        if s.len() > 64 {
            return Err(CodeError::Shape);
        }
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split(|c: char| c == '-' || c.is_whitespace()).filter(|p| !p.is_empty()).collect();
        let [number, words @ ..] = parts.as_slice() else { return Err(CodeError::Shape) };
        if words.len() != 3 {
            return Err(CodeError::Shape);
        }
        let nameplate: u16 = number.parse().map_err(|_| CodeError::Nameplate)?;
        if !(1..=MAX_NAMEPLATE).contains(&nameplate) {
            return Err(CodeError::Nameplate);
        }
        let mut out = [0u8; 3];
        for (slot, word) in out.iter_mut().zip(words) {
            let index = WORDS.binary_search(word).map_err(|_| CodeError::Word(word.to_string()))?;
            *slot = index as u8;
        }
        Ok(Self { nameplate, words: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_forgive_case_and_spacing() {
        assert!(WORDS.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        for _ in 0..200 {
            let code = Code::generate();
            assert!((1..=MAX_NAMEPLATE).contains(&code.nameplate()));
            assert_eq!(code.to_string().parse::<Code>(), Ok(code));
            let shouted = code.to_string().to_uppercase().replace('-', "  ");
            assert_eq!(shouted.parse::<Code>(), Ok(code));
        }
        let code: Code = "42-amber-castle-otter".parse().unwrap();
        let debug = format!("{code:?}");
        assert!(debug.contains("42") && !debug.contains("amber"), "debug output hides the words: {debug}");
    }

    #[test]
    fn bad_codes_say_what_is_wrong() {
        assert_eq!("".parse::<Code>(), Err(CodeError::Shape));
        assert_eq!("42-amber-castle".parse::<Code>(), Err(CodeError::Shape));
        assert_eq!("0-amber-castle-otter".parse::<Code>(), Err(CodeError::Nameplate));
        assert_eq!("1000-amber-castle-otter".parse::<Code>(), Err(CodeError::Nameplate));
        assert_eq!("x-amber-castle-otter".parse::<Code>(), Err(CodeError::Nameplate));
        assert_eq!("42-amber-castel-otter".parse::<Code>(), Err(CodeError::Word("castel".into())));
        assert_eq!("9".repeat(100).parse::<Code>(), Err(CodeError::Shape));
    }

    #[test]
    fn rendezvous_depends_on_the_nameplate_only() {
        assert_eq!(Code::rendezvous(42), Code::rendezvous(42));
        assert_ne!(Code::rendezvous(42), Code::rendezvous(43));
        let one: Code = "42-amber-castle-otter".parse().unwrap();
        let other: Code = "42-amber-castle-raven".parse().unwrap();
        assert_ne!(one.password(), other.password());
    }
}
