//! The CA's upkeep while the broker runs: re-signing the CRL well before its
//! next-update (a CRL past it would refuse every partner).

use std::time::Duration;

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use crate::ca::CaError;
use crate::ca::lifecycle::refresh_crl;
use crate::home::Home;

/// Re-signs the CRL when less than half of `validity` is left (or it cannot
/// be read). Returns whether it re-signed.
pub fn refresh_crl_if_due(home: &Home, validity: Duration) -> Result<bool, CaError> {
    let crl = match CertificateRevocationListDer::from_pem_file(home.crl()) {
        Ok(c) => c,
        Err(_) => {
            refresh_crl(home)?;
            return Ok(true);
        }
    };
    let next_update =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
            .ok()
            .and_then(|(_, c)| c.next_update())
            .map(|t| t.timestamp());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let due = match next_update {
        Some(t) => t - now < (validity.as_secs() / 2) as i64,
        None => true,
    };
    if due {
        refresh_crl(home)?;
    }
    Ok(due)
}
