//! The last lines of a process's output, kept in bounded memory.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// Splits bytes into lines as they come, each cut at `MAX_LINE` bytes (and marked cut).
#[derive(Default)]
struct LineCutter {
    line: Vec<u8>,
    cut: bool,
}

impl LineCutter {
    fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        for &b in bytes {
            if b == b'\n' {
                emit(&self.line, self.cut);
                self.line.clear();
                self.cut = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.cut = true;
            }
        }
    }

    fn finish(self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.line.is_empty() {
            emit(&self.line, self.cut);
        }
    }
}

/// Keeps at most `max_lines` lines of at most `max_line` bytes each.
#[derive(Clone)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
    max_lines: usize,
}

const MAX_LINE: usize = 2048;

impl Tail {
    pub fn new(max_lines: usize) -> Self {
        Self {
            lines: Arc::new(Mutex::new(VecDeque::with_capacity(max_lines))),
            max_lines,
        }
    }

    pub fn push(&self, line: &str) {
        let mut line = line.trim_end().to_string();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == self.max_lines {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// Reads a pipe to its end on the calling thread. A line is cut at `MAX_LINE`
    /// bytes as it is read: a tool that writes megabytes without a newline costs
    /// no more memory than one that writes short lines.
    pub fn drain(&self, mut pipe: impl Read) {
        let mut chunk = [0u8; 8192];
        let mut lines = LineCutter::default();
        loop {
            let n = match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            lines.feed(&chunk[..n], |line, cut| self.push_bytes(line, cut));
        }
        lines.finish(|line, cut| self.push_bytes(line, cut));
    }

    /// [`Tail::drain`] for an async pipe, on a task instead of a thread.
    pub async fn drain_async(&self, mut pipe: impl tokio::io::AsyncRead + Unpin) {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        let mut lines = LineCutter::default();
        loop {
            let n = match pipe.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            lines.feed(&chunk[..n], |line, cut| self.push_bytes(line, cut));
        }
        lines.finish(|line, cut| self.push_bytes(line, cut));
    }

    fn push_bytes(&self, line: &[u8], cut: bool) {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if cut {
            text.push('…');
        }
        self.push(&text);
    }

    pub fn text(&self) -> String {
        self.lines
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        let tail = Tail::new(2);
        tail.drain("one\ntwo\nthree\n".as_bytes());
        assert_eq!(tail.text(), "two\nthree");
    }

    #[test]
    fn a_line_without_end_is_cut_as_it_is_read() {
        let tail = Tail::new(2);
        let mut flood = vec![b'x'; 10 * MAX_LINE];
        flood.extend_from_slice(b"\nlast");
        tail.drain(flood.as_slice());
        let text = tail.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].len() <= MAX_LINE + '…'.len_utf8() && lines[0].ends_with('…'));
        assert_eq!(lines[1], "last");
    }
}
