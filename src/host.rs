//! The machine larder runs on: who runs it, the host's name, and the
//! clock. Recorded in key files, snapshots and leases; the only module
//! besides the command line that asks the operating system who it is.

/// The user running the operation (the login name, or the numeric uid when
/// it has none), recorded in key files and snapshots.
pub fn current_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    user_name(uid).unwrap_or_else(|| uid.to_string())
}

/// The login name of `uid`, if the user database has one.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    // SAFETY: an all-zero passwd is a valid value to be written over, and
    // getpwuid_r's arguments are exactly those `lookup_r` passes.
    lookup_r(|buf, found: &mut *mut libc::passwd| unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let rc = libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr().cast(), buf.len(), found);
        (rc, entry.pw_name)
    })
}

/// The name of group `gid`, if the group database has one.
pub(crate) fn group_name(gid: u32) -> Option<String> {
    // SAFETY: as for `user_name`, with getgrgid_r.
    lookup_r(|buf, found: &mut *mut libc::group| unsafe {
        let mut entry: libc::group = std::mem::zeroed();
        let rc = libc::getgrgid_r(gid, &mut entry, buf.as_mut_ptr().cast(), buf.len(), found);
        (rc, entry.gr_name)
    })
}

/// Runs a reentrant `get*_r` lookup into a caller-owned buffer (nothing is
/// shared with other threads), retrying with more room while the entry
/// does not fit. `call` returns the call's result code and the name
/// pointer of the entry it filled; the pointer is read only on success,
/// when it points into the buffer.
fn lookup_r<T>(
    mut call: impl FnMut(&mut [u8], &mut *mut T) -> (i32, *mut libc::c_char),
) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        let mut found: *mut T = std::ptr::null_mut();
        let (rc, name) = call(&mut buf, &mut found);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || name.is_null() {
            return None;
        }
        // SAFETY: on success the name points into `buf`, NUL-terminated,
        // and `buf` is alive here.
        return Some(
            unsafe { std::ffi::CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned(),
        );
    }
}

/// This machine's host name.
pub fn current_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Nanoseconds since the epoch, now.
pub(crate) fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}
