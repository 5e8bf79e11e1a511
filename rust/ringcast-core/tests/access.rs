//! Attaching by name checks the object before trusting it (segment/access.rs): no symbolic
//! link, a regular file, owned by this user, root or an allowed user, not writable by others
//! unless accepted; `gc` removes only the caller's segments. The cases with another owner
//! need root (they `chown` the object) and are skipped otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{opts, uniq, Cleanup};
use ringcast_core::segment::{self, Access};
use ringcast_core::{Error, Queue};

const NOBODY: u32 = 65534;

fn path(name: &str) -> String {
    format!("/dev/shm/{name}")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn chown(name: &str, uid: u32) {
    std::os::unix::fs::lchown(path(name), Some(uid), Some(uid)).unwrap();
}

#[test]
fn a_symbolic_link_is_never_followed() {
    let name = uniq("link");
    let alias = format!("{name}-alias");
    let _c = Cleanup(name.clone());
    let _a = Cleanup(alias.clone());
    let _q = Queue::create(&name, opts(4096, 8)).unwrap();
    std::os::unix::fs::symlink(path(&name), path(&alias)).unwrap();
    let e = Queue::attach(&alias).err().unwrap();
    assert!(matches!(e, Error::Permission { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let e = segment::inspect(&alias).err().unwrap();
    assert!(matches!(e, Error::Permission { .. }), "{e}");
    assert!(!segment::list_names().contains(&alias));
    assert!(!segment::remove_if_stale(&alias));
    assert!(std::fs::symlink_metadata(path(&alias)).is_ok());
}

#[test]
fn write_permission_for_others_must_be_accepted() {
    let name = uniq("mode");
    let _c = Cleanup(name.clone());
    let _q = Queue::create(&name, opts(4096, 8)).unwrap();
    std::fs::set_permissions(path(&name), std::fs::Permissions::from_mode(0o660)).unwrap();
    let e = Queue::attach(&name).err().unwrap();
    assert!(matches!(e, Error::Permission { .. }), "{e}");
    assert!(Queue::attach_with(&name, &Access::for_mode(0o660).unwrap()).is_ok());
    let mut o = opts(4096, 8);
    assert!(matches!(
        Queue::open(&name, o),
        Err(Error::Permission { .. })
    ));
    o.mode = 0o666;
    assert!(Queue::open(&name, o).is_ok());
}

#[test]
fn another_users_object_needs_an_allowance_and_is_never_collected() {
    if !is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let name = uniq("owner");
    let _c = Cleanup(name.clone());
    // Queue::create adds no member and the handle does not unlink: the object stays.
    drop(Queue::create(&name, opts(4096, 8)).unwrap());
    chown(&name, NOBODY);
    let e = Queue::attach(&name).err().unwrap();
    assert!(
        e.to_string().contains(&format!("owned by uid {NOBODY}")),
        "{e}"
    );
    let allowed = Access::private().allow_user(NOBODY);
    assert!(Queue::attach_with(&name, &allowed).is_ok());
    assert_eq!(segment::inspect(&name).unwrap().owner, NOBODY);
    assert!(!segment::remove_if_stale(&name));
    assert!(!segment::gc().contains(&name));
    assert!(std::fs::metadata(path(&name)).is_ok());
    assert!(matches!(segment::access::owned_by_caller(&name), Ok(false)));
    chown(&name, 0);
    assert!(matches!(segment::access::owned_by_caller(&name), Ok(true)));
}
