//! Decoding and encoding errors, naming the field where decoding stopped.

use std::fmt;

/// One step of the path to the field where decoding failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// The message type, first in the path (`Hello`).
    Type(&'static str),
    /// A named or numbered field (`protocols`, `0`).
    Field(&'static str),
    /// An element of a sequence or map entry, by position.
    Index(u64),
    /// An enum variant (`Message::Ping`).
    Variant(&'static str),
}

/// What went wrong while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The stream ended cleanly before the first byte of the message: the peer is done.
    Closed,
    /// The stream ended in the middle of the message.
    Truncated,
    /// A length prefix is over its limit. Refused before anything is allocated.
    TooLong {
        /// The length read.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The message needs more bytes than its total budget allows.
    OverBudget {
        /// Bytes the message would need.
        needed: u64,
        /// The budget.
        budget: u64,
    },
    /// Recursive values nest deeper than allowed.
    TooDeep {
        /// The nesting limit.
        max: u32,
    },
    /// An enum tag that names no variant.
    UnknownTag(u64),
    /// A value that is not valid for its type (bool not 0 or 1, bad UTF-8, overlong varint,
    /// duplicate map key, …).
    Invalid(String),
    /// The transport failed.
    Io(std::io::ErrorKind, String),
}

/// Why a message could not be decoded: the field path and the problem, displayed as
/// `Hello.protocols[3]: length 10000000 exceeds max 1024`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    path: Vec<PathSegment>,
    kind: DecodeErrorKind,
}

impl DecodeError {
    /// An error at the current position (the path is filled in as the error travels out).
    pub fn new(kind: DecodeErrorKind) -> Self {
        Self { path: Vec::new(), kind }
    }

    /// An [`DecodeErrorKind::Invalid`] error.
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::new(DecodeErrorKind::Invalid(reason.into()))
    }

    /// What went wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// Where, outermost first.
    pub fn path(&self) -> &[PathSegment] {
        &self.path
    }

    /// True if the stream ended cleanly before the message: not an error of the peer's, just
    /// the end of what it sends.
    pub fn is_closed(&self) -> bool {
        self.kind == DecodeErrorKind::Closed
    }

    /// Adds `segment` in front of the path (used by the decoders of enclosing values).
    pub fn within(mut self, segment: PathSegment) -> Self {
        self.path.insert(0, segment);
        self
    }

    /// In front of the path: a field.
    pub fn in_field(self, name: &'static str) -> Self {
        self.within(PathSegment::Field(name))
    }

    /// In front of the path: an element.
    pub fn at_index(self, index: u64) -> Self {
        self.within(PathSegment::Index(index))
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for segment in &self.path {
            match segment {
                PathSegment::Type(name) | PathSegment::Variant(name) if first => write!(f, "{name}")?,
                PathSegment::Type(name) | PathSegment::Variant(name) => write!(f, "::{name}")?,
                PathSegment::Field(name) if first => write!(f, "{name}")?,
                PathSegment::Field(name) => write!(f, ".{name}")?,
                PathSegment::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        if !first {
            f.write_str(": ")?;
        }
        match &self.kind {
            DecodeErrorKind::Closed => f.write_str("stream closed before the message"),
            DecodeErrorKind::Truncated => f.write_str("message truncated"),
            DecodeErrorKind::TooLong { len, max } => write!(f, "length {len} exceeds max {max}"),
            DecodeErrorKind::OverBudget { needed, budget } => {
                write!(f, "message needs {needed} bytes, over its budget of {budget}")
            }
            DecodeErrorKind::UnknownTag(tag) => write!(f, "unknown tag {tag}"),
            DecodeErrorKind::TooDeep { max } => write!(f, "nested deeper than {max} levels"),
            DecodeErrorKind::Invalid(reason) => f.write_str(reason),
            DecodeErrorKind::Io(_, reason) => write!(f, "read failed: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a value could not be encoded: it breaks a limit its peer would enforce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A length is over the field's limit.
    #[error("{field}: length {len} exceeds max {max}")]
    TooLong {
        /// The field (`Type.field`).
        field: String,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The encoded message is over its budget.
    #[error("{message}: {len} bytes exceed the message budget of {budget}")]
    OverBudget {
        /// The message type.
        message: &'static str,
        /// Its encoded size.
        len: u64,
        /// The budget.
        budget: u64,
    },
}

impl EncodeError {
    /// Prefixes the field path with `name`.
    pub fn in_field(self, name: &str) -> Self {
        match self {
            EncodeError::TooLong { field, len, max } => {
                let field = if field.is_empty() {
                    name.to_owned()
                } else if field.starts_with('[') {
                    format!("{name}{field}")
                } else {
                    format!("{name}.{field}")
                };
                EncodeError::TooLong { field, len, max }
            }
            other => other,
        }
    }
}
