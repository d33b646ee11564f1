//! The hold sweep visits the tenants only when a hold could be due for release:
//! at its first pass, when a hub process left the live set, and every
//! `hold_expiry_sweep_interval_ms` (see `SweepState` in src/hub.rs). Between
//! those, a pass is a heartbeat and one read of the live set.

use crate::helpers::*;
use crate::on_both_stores;
use aigne_hub::hub::now_ms;
use domain::InstanceId;
use std::time::Duration;

async fn the_sweep_visits_tenants_only_when_a_hold_could_be_due(kind: StoreKind) {
    let app = spawn_app_with(kind, |s| {
        s.limits.hold_expiry_sweep_interval_ms = 600_000;
    })
    .await;
    let tick = Duration::from_millis(app.settings.limits.hold_sweep_interval_ms);
    let stale_ms = app.settings.limits.instance_stale_after_ms;
    let full_sweeps = || app.hub.full_hold_sweeps();
    // The first pass.
    wait_until(WAIT_DEADLINE, "the first full sweep", || async {
        full_sweeps() >= 1
    })
    .await;
    assert_eq!(full_sweeps(), 1);

    // Nothing changes: passes go on without visiting anyone. (A check that
    // nothing happens: it can only wait for a few passes of the loop.)
    tokio::time::sleep(tick * 5).await;
    assert_eq!(full_sweeps(), 1, "no process left, no hold expired");

    // Another process joins (it beats once), is seen, then falls silent.
    let other = InstanceId::new_random();
    app.store().heartbeat(other, now_ms()).await.unwrap();
    // Nothing may happen: wait for a few passes.
    tokio::time::sleep(tick * 3).await;
    assert_eq!(full_sweeps(), 1, "a process joining releases nothing");
    let stale_and_seen = Duration::from_millis(stale_ms) + tick * 20;
    wait_until(
        stale_and_seen,
        "the process that left has its holds swept",
        || async { full_sweeps() >= 2 },
    )
    .await;
    assert_eq!(
        full_sweeps(),
        2,
        "the process that left has its holds swept"
    );
    // Nothing more may happen: wait for a few passes.
    tokio::time::sleep(tick * 3).await;
    assert_eq!(full_sweeps(), 2);
}
on_both_stores!(
    the_sweep_visits_tenants_only_when_a_hold_could_be_due,
    the_sweep_visits_tenants_only_when_a_hold_could_be_due
);
