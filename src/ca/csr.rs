//! Certificate signing requests from partners. A CSR is untrusted input: we
//! check that it is PEM, that it parses, that its self-signature holds (so
//! the requester has the private key) and that its key is of a kind we
//! accept. Then only its public key is used; subject, SANs and extensions in
//! the request are ignored (docs/architecture.md, "Identity").

use rcgen::SubjectPublicKeyInfo;
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::{CaError, invalid};

/// Largest CSR we read (a P-256 CSR is under 1 KiB; RSA-4096 under 4 KiB).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Checks a PEM CSR and returns its subject public key, the only part used.
pub fn verified_public_key(pem: &[u8]) -> Result<SubjectPublicKeyInfo, CaError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(invalid("the CSR is larger than 64 KiB"));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(pem).map_err(|_| {
        invalid("the CSR is not PEM (expected a -----BEGIN CERTIFICATE REQUEST----- block)")
    })?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| invalid(format!("the CSR cannot be parsed: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("the CSR has trailing bytes"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    let key_ok = if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        curve.is_some_and(|c| c == OID_EC_P256 || c == OID_NIST_EC_P384)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        matches!(spki.parsed(), Ok(PublicKey::RSA(rsa)) if (2048..=8192).contains(&rsa.key_size()))
    } else {
        *alg == OID_SIG_ED25519
    };
    if !key_ok {
        return Err(invalid(
            "the CSR's key type is not supported (use ECDSA P-256 or P-384, RSA 2048-8192, or Ed25519)",
        ));
    }
    csr.verify_signature().map_err(|_| {
        invalid("the CSR's signature does not verify (it was not signed by its own key)")
    })?;
    SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| invalid(format!("the CSR's public key cannot be used: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

    fn csr_pem() -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(vec!["admin.example".to_string()]).unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn accepts_a_good_csr() {
        assert!(verified_public_key(csr_pem().as_bytes()).is_ok());
    }

    #[test]
    fn refuses_garbage_and_tampering() {
        assert!(verified_public_key(b"hello").is_err());
        let pem = csr_pem();
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        // Flip a byte inside the subject (early in the request info).
        bytes[30] ^= 0x01;
        let tampered = super::super::pem_block("CERTIFICATE REQUEST", &bytes);
        assert!(verified_public_key(tampered.as_bytes()).is_err());
    }
}
