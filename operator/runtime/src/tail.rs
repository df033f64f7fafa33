//! The last lines of a process's output, kept in bounded memory.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

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

    /// Reads a pipe to its end on the calling thread.
    pub fn drain(&self, pipe: impl Read) {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            self.push(&String::from_utf8_lossy(&buf));
            buf.clear();
        }
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
}
