//! The poller's memory of what it has already turned into runs, per workflow.
//!
//! S3 listings come in key order, not arrival order, so a "last key" cursor would miss
//! objects that sort before it. The cursor is the set of keys (with their ETags) under
//! the trigger's prefix that have runs; it only holds keys that still exist, so it is
//! as large as one listing. A key overwritten with new content (a new ETag) is new.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    /// Without quotes.
    pub etag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    /// key -> ETag of the objects that have runs.
    pub seen: BTreeMap<String, String>,
}

impl Cursor {
    /// A first cursor that takes everything listed now as seen (objects that were there
    /// before the trigger do not run).
    pub fn baseline(listed: &[Listed]) -> Self {
        Self {
            seen: listed
                .iter()
                .map(|l| (l.key.clone(), l.etag.clone()))
                .collect(),
        }
    }

    pub fn is_new(&self, object: &Listed) -> bool {
        self.seen.get(&object.key) != Some(&object.etag)
    }

    /// The objects in `listed` that have no run yet, in key order.
    pub fn new_objects<'a>(&self, listed: &'a [Listed]) -> Vec<&'a Listed> {
        listed.iter().filter(|l| self.is_new(l)).collect()
    }

    /// After a poll: keeps what still exists and was seen before or got its run now
    /// (`created`). An object whose run could not be created stays new, to be tried
    /// again at the next poll.
    pub fn advance(&mut self, listed: &[Listed], created: &[Listed]) {
        // A set: a listing of n new objects all created is n lookups, not n^2 compares.
        let created: HashSet<(&str, &str)> = created
            .iter()
            .map(|c| (c.key.as_str(), c.etag.as_str()))
            .collect();
        let mut next = BTreeMap::new();
        for l in listed {
            if !self.is_new(l) || created.contains(&(l.key.as_str(), l.etag.as_str())) {
                next.insert(l.key.clone(), l.etag.clone());
            }
        }
        self.seen = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(key: &str, etag: &str) -> Listed {
        Listed {
            key: key.into(),
            etag: etag.into(),
        }
    }

    #[test]
    fn new_objects_then_nothing_twice() {
        let mut c = Cursor::default();
        let listed = vec![l("in/b.mp4", "1"), l("in/a.mp4", "2")];
        let new = c.new_objects(&listed);
        assert_eq!(new.len(), 2);
        // Only `a` got its run: `b` stays new.
        c.advance(&listed, &[l("in/a.mp4", "2")]);
        let new: Vec<_> = c.new_objects(&listed).into_iter().cloned().collect();
        assert_eq!(new, vec![l("in/b.mp4", "1")]);
        c.advance(&listed, &new);
        assert!(c.new_objects(&listed).is_empty());
    }

    #[test]
    fn an_object_that_sorts_first_but_arrives_last_is_new() {
        let mut c = Cursor::default();
        let first = vec![l("in/m.mp4", "1")];
        c.advance(&first, &first);
        let later = vec![l("in/a.mp4", "9"), l("in/m.mp4", "1")];
        assert_eq!(c.new_objects(&later), vec![&l("in/a.mp4", "9")]);
    }

    #[test]
    fn deleted_keys_leave_the_cursor_and_overwrites_are_new() {
        let mut c = Cursor::baseline(&[l("in/a.mp4", "1"), l("in/b.mp4", "1")]);
        let now = vec![l("in/a.mp4", "2")];
        assert_eq!(c.new_objects(&now).len(), 1, "a was overwritten");
        c.advance(&now, &[]);
        assert!(c.seen.is_empty(), "b is gone; a's run failed to be created");
        c.advance(&now, &now);
        assert_eq!(c.seen.get("in/a.mp4").map(String::as_str), Some("2"));
    }
}
