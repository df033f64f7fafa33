//! `vflow sim`: the planner against its baselines in a simulated cluster.

use std::path::Path;

use vflow_planner::sim::{self, BenchReport, Scale, Scenario, report, workload_file};

pub struct Outcome {
    pub stdout: String,
    pub stderr: Vec<String>,
    /// 0: ran; 1: the workload file is not a valid workload; 2: a file unreadable or
    /// an output not writable.
    pub code: u8,
}

pub struct Args<'a> {
    pub scenario: Scenario,
    pub workload: Option<&'a Path>,
    pub seed: u64,
    pub burst: usize,
    pub json: bool,
    pub svg: Option<&'a Path>,
    /// Writes results.json, the plots and REPORT.md here.
    pub report: Option<&'a Path>,
    /// The command line to print in REPORT.md.
    pub command: String,
}

pub fn run(a: &Args) -> Outcome {
    let mut out = Outcome {
        stdout: String::new(),
        stderr: Vec::new(),
        code: 0,
    };
    if let Some(file) = a.workload {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                out.stderr
                    .push(format!("{}: cannot read: {e}", file.display()));
                out.code = 2;
                return out;
            }
        };
        let parsed: Result<workload_file::WorkloadFile, _> = serde_saphyr::from_str(&text);
        let w = match parsed {
            Ok(w) => w,
            Err(e) => {
                out.stderr
                    .push(format!("{}: not a workload: {e}", file.display()));
                out.code = 1;
                return out;
            }
        };
        match workload_file::run_file(&w, a.seed) {
            Ok(r) => {
                out.stdout = if a.json {
                    serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"
                } else {
                    report::smse_table(&r)
                };
            }
            Err(e) => {
                out.stderr.push(format!("{}: {e}", file.display()));
                out.code = 1;
            }
        }
        return out;
    }
    let r = sim::run(a.scenario, a.seed, Scale::Full, a.burst);
    out.stdout = if a.json {
        serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"
    } else {
        sim::tables(&r)
    };
    if let Some(dir) = a.svg
        && let Err(e) = write_plots(dir, &r)
    {
        out.stderr.push(e);
        out.code = 2;
    }
    if let Some(dir) = a.report {
        let json = serde_json::to_string_pretty(&r).unwrap_or_default() + "\n";
        let result = write_plots(dir, &r)
            .and_then(|_| write(dir, "results.json", &json))
            .and_then(|_| write(dir, "REPORT.md", &report::markdown(&r, &a.command)));
        if let Err(e) = result {
            out.stderr.push(e);
            out.code = 2;
        }
    }
    out
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

fn write_plots(dir: &Path, r: &BenchReport) -> Result<(), String> {
    for (name, svg) in report::plots(r) {
        write(dir, &name, &svg)?;
    }
    Ok(())
}
