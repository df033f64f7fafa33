//! The contract between the run side (vflow-runs, which posts its demand on the board)
//! and the workflow controller (which scales from it): a change pokes a reconcile of
//! the workflow that changed, and the controller reads exactly what was posted.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use vflow_operator::signals;
use vflow_runs::demand::DemandBoard;

#[tokio::test]
async fn the_operator_reads_the_runs_demand_as_meant() {
    let board = DemandBoard::default();
    let mut pokes = board.subscribe();
    let keep = Duration::from_secs(30);
    board.update("videos", "wf", keep, |d| {
        d.begin("copy");
        d.begin("copy");
        d.begin("split");
    });
    let at: Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
    board.update("videos", "wf", keep, |d| d.request_prewarm("join", 2, at));
    for _ in 0..2 {
        assert_eq!(
            pokes.recv().await,
            Some(("videos".to_string(), "wf".to_string()))
        );
    }
    let now: Timestamp = "2029-12-31T23:59:00Z".parse().expect("time");
    let mut s = signals::parse(None, &["split", "copy", "join"]);
    s.add(&board.get("videos", "wf", now), &["split", "copy", "join"]);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.in_flight("copy"), 2);
    assert_eq!(s.in_flight("split"), 1);
    let p: Vec<_> = s.prewarm_for("join").collect();
    assert_eq!((p.len(), p[0].replicas, p[0].at), (1, 2, at));
}
