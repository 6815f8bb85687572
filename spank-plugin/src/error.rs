//! The plugin's one error type. Every message is written for the person who has to act on it
//! (the user on their terminal, or the admin in slurmd's log), says what is wrong and what to do,
//! and gets the "flexmig: " prefix exactly once, from [`Display`](std::fmt::Display).

use std::fmt;

/// Who has to act on an error, which is also where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A plugstack.conf argument: the admin fixes the plugstack line.
    Config,
    /// The node inventory or the lock directory: the admin fixes the node.
    Node,
    /// What the step asked for does not fit (no GPUs, too many tasks, a bad mode, a leaf in use):
    /// the user changes the request.
    Step,
    /// A call into Slurm failed.
    Slurm,
}

/// An error of the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn node(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Node, message)
    }
    pub fn step(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Step, message)
    }
    pub fn slurm(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Slurm, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flexmig: {}", self.message)
    }
}

impl std::error::Error for Error {}

/// The plugin's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_added_once() {
        let e = Error::step("no GPUs");
        assert_eq!(e.to_string(), "flexmig: no GPUs");
        assert_eq!(e.message(), "no GPUs");
        assert_eq!(e.kind(), ErrorKind::Step);
    }
}
