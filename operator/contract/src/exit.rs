//! How a function process ended.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Exit {
    Code { code: i32 },
    Signal { signal: i32 },
    TimedOut,
    Cancelled,
}

impl Exit {
    pub fn success(&self) -> bool {
        *self == Exit::Code { code: 0 }
    }
}

/// The Linux name of a signal number (those a function is likely to die of).
fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => "?",
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code { code } => write!(f, "exit status {code}"),
            Exit::Signal { signal } => {
                write!(f, "killed by signal {signal} ({})", signal_name(*signal))
            }
            Exit::TimedOut => write!(f, "timed out"),
            Exit::Cancelled => write!(f, "cancelled"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_as_people_say_them() {
        assert!(Exit::Code { code: 0 }.success());
        assert!(!Exit::Signal { signal: 9 }.success());
        assert_eq!(
            Exit::Signal { signal: 9 }.to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            Exit::Signal { signal: 64 }.to_string(),
            "killed by signal 64 (?)"
        );
        assert_eq!(Exit::Code { code: 3 }.to_string(), "exit status 3");
        let json = serde_json::to_string(&Exit::Signal { signal: 11 }).expect("json");
        assert_eq!(json, r#"{"kind":"signal","signal":11}"#);
    }
}
