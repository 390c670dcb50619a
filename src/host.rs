//! The machine larder runs on: who runs it, the host's name, and the
//! clock. Recorded in key files, snapshots and leases; the only module
//! besides the command line that asks the operating system who it is.

/// The user running the operation (the login name, or the numeric uid when
/// it has none), recorded in key files and snapshots.
pub fn current_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    // getpwuid_r fills a caller-owned buffer, so nothing is shared with
    // other threads; a name longer than the buffer retries with more room.
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value to be written over.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buf` is as long
        // as the length given.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_name.is_null() {
            return uid.to_string();
        }
        // SAFETY: on success pw_name points into `buf`, NUL-terminated.
        return unsafe { std::ffi::CStr::from_ptr(entry.pw_name) }
            .to_string_lossy()
            .into_owned();
    }
}

/// This machine's host name.
pub fn current_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}
