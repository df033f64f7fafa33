//! Prints the CustomResourceDefinitions, or writes one file per CRD into a directory
//! (`crdgen crds/`). `make crds` runs it; never edit crds/ by hand.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let dir = std::env::args_os().nth(1).map(PathBuf::from);
    for crd in vflow_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = match vflow_api::crd_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot render {name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match &dir {
            Some(dir) => {
                let path = dir.join(format!("{name}.yaml"));
                if let Err(e) = std::fs::write(&path, yaml) {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}
