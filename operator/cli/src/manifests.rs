//! Reading manifests: YAML files of one or more documents, sorted into vflow's kinds,
//! each checked against the CRD schema before it is turned into a typed object.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use vflow_api::{
    API_VERSION, FunctionProfile, GROUP, VideoWorkflow, VideoWorkflowRun,
    schema_check::SchemaCheck, validate::Problem,
};

/// A file that could not be read or parsed at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: YAML syntax error: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
}

/// One vflow object from a file.
#[derive(Debug, Clone)]
pub enum Object {
    Profile(Box<FunctionProfile>),
    Workflow(Box<VideoWorkflow>),
    Run(Box<VideoWorkflowRun>),
}

/// A document and what became of it.
#[derive(Debug)]
pub struct Document {
    pub file: PathBuf,
    /// 1-based position of the document in its file.
    pub index: usize,
    /// `Kind/name` for messages.
    pub label: String,
    /// The typed object, when it passed the schema.
    pub object: Option<Object>,
    /// Schema problems (and problems with apiVersion, kind or name).
    pub problems: Vec<Problem>,
}

/// Reads every document of a YAML file. Documents of other API groups (a Secret next to
/// a workflow, say) are left out: they are kubectl's business.
/// The YAML files of a directory (sorted, not recursive), or the file itself.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read = std::fs::read_dir(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    out.sort();
    Ok(out)
}

pub fn load_file(path: &Path) -> Result<Vec<Document>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(path, &text)
}

pub fn load_str(path: &Path, text: &str) -> Result<Vec<Document>, LoadError> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        LoadError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: first_line(&e.to_string()),
        }
    })?;
    Ok(values
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .filter_map(|(i, v)| classify(path, i + 1, v))
        .collect())
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    // saphyr prefixes "error: line L column C: "; we print the location ourselves.
    line.split_once(": ")
        .filter(|(head, _)| head.starts_with("error"))
        .and_then(|(_, rest)| rest.split_once(": ").map(|(_, msg)| msg.to_string()))
        .unwrap_or_else(|| line.to_string())
}

fn classify(path: &Path, index: usize, value: Value) -> Option<Document> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    if group != GROUP {
        return None;
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut doc = Document {
        file: path.to_path_buf(),
        index,
        label: format!(
            "{}/{}",
            if kind.is_empty() { "?" } else { &kind },
            if name.is_empty() { "?" } else { &name }
        ),
        object: None,
        problems: Vec::new(),
    };
    let problem = |path: &str, message: String| Problem {
        path: path.to_string(),
        message,
    };
    if api_version != API_VERSION {
        doc.problems.push(problem(
            "apiVersion",
            format!("{api_version:?} is not served; use {API_VERSION}"),
        ));
        return Some(doc);
    }
    if name.is_empty() && value.pointer("/metadata/generateName").is_none() {
        doc.problems
            .push(problem("metadata.name", "required field is missing".into()));
    }
    let Some(check) = SchemaCheck::for_kind(&kind) else {
        doc.problems.push(problem(
            "kind",
            format!("{kind:?} is not a vflow kind; use FunctionProfile, VideoWorkflow or VideoWorkflowRun"),
        ));
        return Some(doc);
    };
    doc.problems.extend(check.check(&value));
    let schema_ok = doc.problems.is_empty();
    let typed = match kind.as_str() {
        "FunctionProfile" => typed(value).map(|o| Object::Profile(Box::new(o))),
        "VideoWorkflow" => typed(value).map(|o| Object::Workflow(Box::new(o))),
        _ => typed(value).map(|o| Object::Run(Box::new(o))),
    };
    match typed {
        // Even past schema problems, a typed object lets validate() report the rest too.
        Ok(object) => doc.object = Some(object),
        Err(_) if !schema_ok => {}
        // The schema accepted it, so this is a value the types are stricter about.
        Err(e) => doc.problems.push(problem("(object)", e.to_string())),
    }
    Some(doc)
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value)
}
