//! `vflow validate FILE...`: every problem in every manifest, or nothing at all.

use std::{collections::BTreeMap, path::PathBuf};

use vflow_api::validate::{ProfileSet, validate_profile, validate_run, validate_workflow};

use crate::manifests::{Document, LoadError, Object, load_file};

/// What `vflow validate` found.
pub struct Report {
    /// Lines to print, one per problem.
    pub lines: Vec<String>,
    /// Files that could not be read or parsed.
    pub load_errors: Vec<LoadError>,
}

impl Report {
    /// 0: all valid; 1: problems in manifests; 2: a file unreadable or not YAML.
    pub fn exit_code(&self) -> u8 {
        if !self.load_errors.is_empty() {
            2
        } else if !self.lines.is_empty() {
            1
        } else {
            0
        }
    }
}

/// Validates `files`, with the FunctionProfiles among them and under `profile_dirs`
/// available to check workflows' stage parameters against.
pub fn run(files: &[PathBuf], profile_dirs: &[PathBuf]) -> Report {
    let mut docs = Vec::new();
    let mut load_errors = Vec::new();
    for file in files {
        match load_file(file) {
            Ok(d) => docs.extend(d),
            Err(e) => load_errors.push(e),
        }
    }
    let mut extra_profiles = Vec::new();
    for dir in profile_dirs {
        match crate::manifests::yaml_files(dir) {
            Ok(paths) => {
                for path in paths {
                    match load_file(&path) {
                        Ok(d) => extra_profiles.extend(d),
                        Err(e) => load_errors.push(e),
                    }
                }
            }
            Err(e) => load_errors.push(e),
        }
    }
    let mut profiles = BTreeMap::new();
    let mut workflows = BTreeMap::new();
    for doc in docs.iter().chain(&extra_profiles) {
        match &doc.object {
            Some(Object::Profile(p)) => {
                profiles.insert(p.metadata.name.clone().unwrap_or_default(), p.spec.clone());
            }
            Some(Object::Workflow(w)) => {
                workflows.insert(w.metadata.name.clone().unwrap_or_default(), (**w).clone());
            }
            _ => {}
        }
    }
    // With --profiles the user says where every profile is: a function without one
    // is a problem (as `vflow plan` finds); without, only the files given are known.
    let profiles = if profile_dirs.is_empty() {
        ProfileSet::partial(profiles)
    } else {
        ProfileSet::complete(profiles)
    };
    let mut lines = Vec::new();
    for doc in &docs {
        let mut problems = doc.problems.clone();
        match &doc.object {
            Some(Object::Profile(p)) => problems.extend(validate_profile(p)),
            Some(Object::Workflow(w)) => problems.extend(validate_workflow(w, &profiles)),
            Some(Object::Run(r)) => {
                let wf = workflows.get(&r.spec.workflow_ref.name);
                problems.extend(validate_run(r, wf, &profiles));
            }
            None => {}
        }
        lines.extend(problems.iter().map(|p| format!("{}: {p}", where_(doc))));
    }
    Report { lines, load_errors }
}

fn where_(doc: &Document) -> String {
    format!(
        "{} (document {}, {})",
        doc.file.display(),
        doc.index,
        doc.label
    )
}
