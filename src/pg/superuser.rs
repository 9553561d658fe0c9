//! Running mmr's own catalog work as the bootstrap superuser, inside any role's session.

use pgrx::pg_sys;

/// Runs SPI work as the bootstrap superuser: a replicated table is written by ordinary
/// roles, but the queue and tombstones are not theirs to touch. Restored on drop (and
/// by transaction abort if an ERROR unwinds).
pub struct AsSuperuser {
    uid: pg_sys::Oid,
    sec: i32,
}

impl AsSuperuser {
    pub fn enter() -> AsSuperuser {
        let (mut uid, mut sec) = (pg_sys::InvalidOid, 0);
        // SAFETY: plain reads/writes of the backend's user id.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut uid, &mut sec);
            pg_sys::SetUserIdAndSecContext(
                pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
                sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
        AsSuperuser { uid, sec }
    }
}

impl Drop for AsSuperuser {
    fn drop(&mut self) {
        // SAFETY: restores what enter() saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.uid, self.sec) };
    }
}
