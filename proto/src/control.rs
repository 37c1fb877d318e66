//! The control line protocol shared by netbuf, diskrep and checkpointd.
//!
//! ```text
//! request = verb *(SP arg) LF            ; ASCII, at most MAX_LINE bytes
//! reply   = "ok" [SP text] LF
//!         / "err" SP CODE SP text LF     ; CODE is one of ErrorCode, upper case
//! ```
//!
//! One request, one reply, in order, on a connection that stays open for as many requests as
//! the client likes. A shell can speak it with `socat - UNIX-CONNECT:/run/netbuf.sock`.
//! This module is pure: parsing and formatting only; [`crate::ctl_socket`] does the I/O.

use crate::epoch::Epoch;
use std::fmt;

/// Longest request or reply line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Why a request failed. The textual code is stable; scripts match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The line is not well formed (bad number, wrong argument count, not UTF-8, too long).
    Parse,
    /// The verb is not one this daemon knows.
    Unknown,
    /// The request is well formed but out of order (a barrier that goes backwards, a release of
    /// an epoch that is still open).
    Order,
    /// The request would exceed the backend's pipeline depth.
    Depth,
    /// The request does not fit the daemon's current state (e.g. commit on a primary).
    State,
    /// The backend failed (netlink, disk I/O, peer connection).
    Backend,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::Parse,
        ErrorCode::Unknown,
        ErrorCode::Order,
        ErrorCode::Depth,
        ErrorCode::State,
        ErrorCode::Backend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Parse => "PARSE",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Order => "ORDER",
            ErrorCode::Depth => "DEPTH",
            ErrorCode::State => "STATE",
            ErrorCode::Backend => "BACKEND",
        }
    }

    pub fn from_code(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request: a code and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ControlError {
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ControlError {
            code,
            message: message.into(),
        }
    }
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Err(ControlError),
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::Ok(text.into())
    }

    /// Formats the reply as one line, newline included. Newlines inside the text are replaced
    /// by spaces so that one reply is always exactly one line.
    pub fn to_line(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Reply::Ok(t) if t.is_empty() => "ok\n".to_string(),
            Reply::Ok(t) => format!("ok {}\n", one_line(t)),
            Reply::Err(e) => format!("err {} {}\n", e.code, one_line(&e.message)),
        }
    }

    /// Parses a reply line (with or without its newline).
    pub fn parse(line: &str) -> Result<Reply, ControlError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line == "ok" {
            return Ok(Reply::Ok(String::new()));
        }
        if let Some(rest) = line.strip_prefix("ok ") {
            return Ok(Reply::Ok(rest.to_string()));
        }
        if let Some(rest) = line.strip_prefix("err ") {
            let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
            let code = ErrorCode::from_code(code).ok_or_else(|| {
                ControlError::new(ErrorCode::Parse, format!("unknown error code {code:?}"))
            })?;
            return Ok(Reply::Err(ControlError::new(code, msg)));
        }
        Err(ControlError::new(
            ErrorCode::Parse,
            format!("not a reply line: {line:?}"),
        ))
    }
}

impl From<Result<String, ControlError>> for Reply {
    fn from(r: Result<String, ControlError>) -> Reply {
        match r {
            Ok(t) => Reply::Ok(t),
            Err(e) => Reply::Err(e),
        }
    }
}

/// A request line split into its verb and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub verb: String,
    pub args: Vec<String>,
}

impl Request {
    /// Splits a request line on ASCII whitespace. An empty line is a parse error.
    pub fn parse(line: &str) -> Result<Request, ControlError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.is_ascii() {
            return Err(ControlError::new(ErrorCode::Parse, "request is not ASCII"));
        }
        let mut words = line.split_ascii_whitespace().map(str::to_string);
        let verb = words
            .next()
            .ok_or_else(|| ControlError::new(ErrorCode::Parse, "empty request"))?;
        Ok(Request {
            verb,
            args: words.collect(),
        })
    }

    pub fn to_line(&self) -> String {
        let mut s = self.verb.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s.push('\n');
        s
    }

    /// Fails unless the request has exactly `n` arguments.
    pub fn expect_args(&self, n: usize) -> Result<(), ControlError> {
        if self.args.len() == n {
            Ok(())
        } else {
            Err(ControlError::new(
                ErrorCode::Parse,
                format!(
                    "{} takes {} argument(s), got {}",
                    self.verb,
                    n,
                    self.args.len()
                ),
            ))
        }
    }

    /// The single epoch argument of `barrier N`, `release N`, `commit N`, ...
    pub fn epoch_arg(&self) -> Result<Epoch, ControlError> {
        self.expect_args(1)?;
        self.args[0]
            .parse::<Epoch>()
            .map_err(|e| ControlError::new(ErrorCode::Parse, format!("{}: {e}", self.verb)))
    }

    /// True when the request is `VERB json` or `VERB --json`.
    pub fn wants_json(&self) -> Result<bool, ControlError> {
        match self.args.as_slice() {
            [] => Ok(false),
            [a] if a == "json" || a == "--json" => Ok(true),
            _ => Err(ControlError::new(
                ErrorCode::Parse,
                format!("{} takes no argument or 'json'", self.verb),
            )),
        }
    }

    pub fn unknown(&self, known: &[&str]) -> ControlError {
        ControlError::new(
            ErrorCode::Unknown,
            format!(
                "unknown command {:?}; known: {}",
                self.verb,
                known.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_requests() {
        let r = Request::parse("barrier 42\n").unwrap();
        assert_eq!(r.verb, "barrier");
        assert_eq!(r.epoch_arg(), Ok(Epoch(42)));
        assert_eq!(
            Request::parse("  stats   json ").unwrap().wants_json(),
            Ok(true)
        );
        assert_eq!(
            Request::parse("").unwrap_err().code,
            ErrorCode::Parse,
            "empty line"
        );
        assert_eq!(
            Request::parse("barrier")
                .unwrap()
                .epoch_arg()
                .unwrap_err()
                .code,
            ErrorCode::Parse
        );
        assert_eq!(
            Request::parse("barrier -3")
                .unwrap()
                .epoch_arg()
                .unwrap_err()
                .code,
            ErrorCode::Parse
        );
        assert_eq!(
            Request::parse("release 1 2")
                .unwrap()
                .epoch_arg()
                .unwrap_err()
                .code,
            ErrorCode::Parse
        );
        assert_eq!(
            Request::parse("barri\u{e9}r 1").unwrap_err().code,
            ErrorCode::Parse
        );
    }

    #[test]
    fn replies_are_one_line() {
        let r = Reply::Err(ControlError::new(ErrorCode::Order, "a\nb"));
        assert_eq!(r.to_line(), "err ORDER a b\n");
        assert_eq!(Reply::ok("").to_line(), "ok\n");
        assert_eq!(Reply::parse("ok\n"), Ok(Reply::ok("")));
        assert!(Reply::parse("err NOPE x").is_err());
        assert!(Reply::parse("okay").is_err());
    }

    proptest! {
        #[test]
        fn reply_round_trips(text in "[ -~]{0,80}", code in 0usize..6, is_ok: bool) {
            let r = if is_ok {
                Reply::Ok(text.clone())
            } else {
                Reply::Err(ControlError::new(ErrorCode::ALL[code], text.clone()))
            };
            let back = Reply::parse(&r.to_line()).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn request_parse_never_panics(line in "\\PC{0,200}") {
            let _ = Request::parse(&line).map(|r| r.epoch_arg());
        }
    }
}
