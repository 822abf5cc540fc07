//! Capability bounding set: what a container's root may ever hold.

use std::io;

/// Drops every capability not in `keep` from the bounding set (and so from what root gets on
/// exec). Capabilities the kernel does not know end the loop.
pub fn limit_bounding_set(keep: &[u32]) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}
