//! The process-wide registry of memberships (`ringcast_core::handle::close_all`, run by the
//! Python bindings at interpreter exit). A test binary of its own: `close_all` leaves every
//! membership of the process, which would disturb tests running beside it.

use std::sync::Arc;

mod common;
use common::{uniq, Cleanup};
use ringcast_core::handle::{close_all, Membership};
use ringcast_core::queue::{KIND_HANDLE, KIND_READER};
use ringcast_core::{Error, Queue, QueueOptions};

#[test]
fn close_all_leaves_every_live_membership_once() {
    let (n1, n2, n3) = (uniq("registry"), uniq("registry"), uniq("registry"));
    let _cleanup = [&n1, &n2, &n3].map(|n| Cleanup(n.clone()));
    let q1 = Queue::create(&n1, QueueOptions::default()).unwrap();
    let q2 = Queue::create(&n2, QueueOptions::default()).unwrap();
    let q3 = Queue::create(&n3, QueueOptions::default()).unwrap();
    let keeper = q3.join(KIND_HANDLE, b"keeper").unwrap();

    let live: Vec<Arc<Membership>> = vec![
        Membership::join(&q1, KIND_HANDLE, b"a").unwrap(),
        Membership::join(&q1, KIND_READER, b"b").unwrap(),
        Membership::join(&q2, KIND_READER, b"c").unwrap(),
        Membership::join(&q3, KIND_READER, b"d").unwrap(),
    ];
    let dropped = Membership::join(&q3, KIND_HANDLE, b"gone").unwrap();
    let left_early = Membership::join(&q3, KIND_READER, b"early").unwrap();
    left_early.leave();
    drop(dropped);
    assert_eq!(q3.stats().members.len(), 2, "the keeper and d");

    assert_eq!(
        close_all(),
        2,
        "q1 and q2 lose their last member and are unlinked"
    );
    assert!(live.iter().all(|m| m.has_left()));
    assert!(matches!(
        Queue::attach(&n1),
        Err(Error::NotFound(_) | Error::Removed(_))
    ));
    assert!(matches!(
        Queue::attach(&n2),
        Err(Error::NotFound(_) | Error::Removed(_))
    ));
    assert_eq!(q3.stats().members.len(), 1, "only the keeper is left in q3");

    assert_eq!(close_all(), 0, "the registry is empty now");
    assert!(live.iter().all(|m| !m.leave()), "each left once");
    drop(live);
    assert_eq!(q3.stats().members.len(), 1);

    // Memberships joined afterwards are registered again; the last one out unlinks q3.
    let late = Membership::join(&q3, KIND_READER, b"late").unwrap();
    assert!(!q3.leave(keeper).unwrap());
    assert_eq!(close_all(), 1);
    assert!(late.has_left());
}
