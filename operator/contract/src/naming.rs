//! The names, labels and ports of a stage's children: the workflow controller creates
//! them, the run side calls and scales them, the observer scrapes them, the runtime
//! listens on them.

/// Labels on every child and pod of a stage.
pub const LABEL_WORKFLOW: &str = "vflow.io/workflow";
pub const LABEL_STAGE: &str = "vflow.io/stage";
pub const LABEL_FUNCTION: &str = "vflow.io/function";

/// The container of a stage pod that runs the runtime and its function (the metrics
/// sidecar is another).
pub const FUNCTION_CONTAINER: &str = "function";

/// Where a function pod's runtime takes invocations (`/invoke`) and reports
/// (`/observations`, `/metrics`): the Service's `http` port.
pub const RUNTIME_PORT: u16 = 8080;
/// Where the metrics sidecar reports: the Service's `metrics` port.
pub const METRICS_PORT: u16 = 9091;

/// `<workflow>-<stage>`, the name of a stage's Deployment and Service.
pub fn child_name(workflow: &str, stage: &str) -> String {
    format!("{workflow}-{stage}")
}

/// The stage's Service in the cluster, e.g. `http://thumbnails-sprite.media.svc:8080`.
pub fn service_url(namespace: &str, workflow: &str, stage: &str) -> String {
    format!(
        "http://{}.{namespace}.svc:{RUNTIME_PORT}",
        child_name(workflow, stage)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_reached_through_its_service() {
        assert_eq!(child_name("thumbnails", "sprite"), "thumbnails-sprite");
        assert_eq!(
            service_url("media", "thumbnails", "sprite"),
            "http://thumbnails-sprite.media.svc:8080"
        );
    }
}
