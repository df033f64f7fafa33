use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = vflow_operator::config::Args::parse();
    match vflow_operator::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vflow-operator stopped");
            eprintln!("vflow-operator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
