//! The CA lock: one exclusive `flock` on `certs/ca.lock`, held by every
//! writer of the inventory, the CRLs and the CA files — CLI commands and the
//! running broker (self-service renewal, CRL re-signing) alike — from the
//! read it bases its decision on to its last write. Two processes that race
//! (a `cert revoke` and a renewal, two `cert renew`s) therefore run one after
//! the other, each seeing the other's result.
//!
//! The lock is per open file description: taking it twice in one call chain
//! would wait for itself, so only the public operations take it, and the
//! functions they call take a `&CaLock` as proof that it is held.

use std::fs::{File, OpenOptions};

use super::CaError;
use crate::home::{Home, HomeError, ensure_dir};

/// The held lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct CaLock {
    _file: File,
}

/// Takes the CA lock, waiting for another holder to finish.
pub fn lock(home: &Home) -> Result<CaLock, CaError> {
    ensure_dir(&home.certs_dir())?;
    let path = home.ca_lock();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| HomeError::io(&path, e))?;
    file.lock().map_err(|e| HomeError::io(&path, e))?;
    Ok(CaLock { _file: file })
}
