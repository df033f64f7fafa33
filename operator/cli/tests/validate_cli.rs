//! `vflow validate` as a user runs it: exit codes, and every expected problem (the
//! `# expect:` lines of each broken manifest) printed with its field path.

use std::{path::PathBuf, process::Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vflow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vflow"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("vflow runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("manifests/examples"))
        .expect("examples")
        .map(|e| {
            format!(
                "manifests/examples/{}",
                e.expect("entry").file_name().to_string_lossy()
            )
        })
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn examples_are_valid_and_nothing_is_printed() {
    let files = examples();
    let args: Vec<&str> = std::iter::once("validate")
        .chain(files.iter().map(String::as_str))
        .collect();
    let (code, out, err) = vflow(&args);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
}

#[test]
fn each_broken_manifest_gets_every_expected_problem() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 4);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("fixture");
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no # expect: lines",
            file.display()
        );
        let path = file.to_string_lossy().into_owned();
        let (code, out, err) = vflow(&["validate", &path, "--profiles", "manifests/examples"]);
        assert_eq!(code, 1, "{path}: stdout:\n{out}\nstderr:\n{err}");
        for want in &expected {
            assert!(
                out.lines()
                    .any(|l| l.ends_with(want) && l.starts_with(path.as_str())),
                "{path}: missing {want:?} in:\n{out}"
            );
        }
        assert_eq!(
            out.lines().count(),
            expected.len(),
            "{path}: unexpected extra problems:\n{out}"
        );
    }
}

#[test]
fn yaml_syntax_errors_give_line_and_column_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("vflow-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: VideoWorkflow\nspec:\n  stages: [a, b\n  storage: x\n",
    )
    .expect("write");
    let bad = bad.to_string_lossy().into_owned();
    let (code, out, err) = vflow(&["validate", &bad, "manifests/examples/detect.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with(&format!("{bad}:4:")),
        "no line:column in {err:?}"
    );
    assert!(err.contains("YAML syntax error"), "{err}");
}

#[test]
fn unreadable_files_exit_2() {
    let (code, _, err) = vflow(&["validate", "no/such/file.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("no/such/file.yaml: cannot read"), "{err}");
}

#[test]
fn other_kinds_beside_vflow_objects_are_left_to_kubectl() {
    let dir = std::env::temp_dir().join(format!("vflow-cli-test-other-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let f = dir.join("secret.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s3}\nstringData: {a: b}\n",
    )
    .expect("write");
    let (code, out, _) = vflow(&["validate", &f.to_string_lossy()]);
    assert_eq!((code, out.as_str()), (0, ""));
}
