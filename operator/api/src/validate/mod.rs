//! Checks shared by the operator, the CLI and the local mode. Each returns every
//! problem at once, each with the field path it concerns and a sentence a person
//! understands; an empty list means valid.

mod params;
mod profile;
mod run;
mod workflow;

use std::{collections::BTreeMap, fmt};

pub use params::check_params;
pub use profile::validate_profile;
pub use run::validate_run;
pub use workflow::{StageShape, validate_workflow, workflow_shape};

use crate::FunctionProfileSpec;

/// One problem with a manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Where, as `spec.stages[2].after[0]`.
    pub path: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
    pub(crate) fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// The FunctionProfiles a workflow can be checked against.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, FunctionProfileSpec>,
    complete: bool,
}

/// What a profile lookup found.
pub enum Lookup<'a> {
    Found(&'a FunctionProfileSpec),
    /// The set is complete (e.g. every profile in the namespace) and has no such name.
    Missing,
    /// The set is partial (e.g. only the files given to `vflow validate`): not checked.
    Unknown,
}

impl ProfileSet {
    /// Profiles known to be all there are: a missing name is a problem.
    pub fn complete(profiles: BTreeMap<String, FunctionProfileSpec>) -> Self {
        ProfileSet {
            profiles,
            complete: true,
        }
    }
    /// Some profiles: names not among them are not checked.
    pub fn partial(profiles: BTreeMap<String, FunctionProfileSpec>) -> Self {
        ProfileSet {
            profiles,
            complete: false,
        }
    }
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        match self.profiles.get(name) {
            Some(p) => Lookup::Found(p),
            None if self.complete => Lookup::Missing,
            None => Lookup::Unknown,
        }
    }
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }
}

/// ` (did you mean "x"?)` when one candidate is close to `wrong`, else nothing.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let limit = (wrong.chars().count() / 3).clamp(1, 3);
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let close = candidates
        .iter()
        .map(|c| (edit_distance(wrong, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c);
    // Else "Automatic" for "Auto": one is the start of the other.
    let lower = wrong.to_lowercase();
    let prefix = || {
        candidates.iter().copied().find(|c| {
            let c = c.to_lowercase();
            c.len() >= 3 && lower.len() >= 3 && (c.starts_with(&lower) || lower.starts_with(&c))
        })
    };
    close
        .or_else(prefix)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, counting an adjacent swap ("scael") as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// DNS-1035 label: what Service names must be.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// DNS-1123 subdomain: what object names must be.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("scael", ["scale", "split"]),
            " (did you mean \"scale\"?)"
        );
        assert_eq!(
            did_you_mean("stich", ["stitch", "split"]),
            " (did you mean \"stitch\"?)"
        );
        assert_eq!(did_you_mean("zzz", ["scale", "split"]), "");
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_dns_label("scale-720p"));
        assert!(!is_dns_label("720p"));
        assert!(!is_dns_label("Scale"));
        assert!(!is_dns_label("scale-"));
        assert!(is_dns_subdomain("ffmpeg.scale"));
        assert!(!is_dns_subdomain("ffmpeg..scale"));
    }
}
