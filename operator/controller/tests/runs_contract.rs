//! The contract between the run controller (vflow-runs, which writes the in-flight and
//! pre-warm annotations) and the workflow controller (which reads them).

use k8s_openapi::jiff::Timestamp;
use vflow_runs::signals::WorkflowSignals;

#[test]
fn the_operator_reads_our_annotations_as_meant() {
    let mut s = WorkflowSignals::default();
    s.begin("copy");
    s.begin("copy");
    s.begin("split");
    let at: Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
    s.request_prewarm("join", 2, at);
    let annotations = s.annotations();
    assert_eq!(
        vflow_runs::signals::IN_FLIGHT,
        vflow_operator::signals::IN_FLIGHT
    );
    assert_eq!(
        vflow_runs::signals::PREWARM,
        vflow_operator::signals::PREWARM
    );
    let parsed = vflow_operator::signals::parse(Some(&annotations), &["split", "copy", "join"]);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert_eq!(parsed.in_flight("copy"), 2);
    assert_eq!(parsed.in_flight("split"), 1);
    let p: Vec<_> = parsed.prewarm_for("join").collect();
    assert_eq!((p.len(), p[0].replicas, p[0].at), (1, 2, at));
}
