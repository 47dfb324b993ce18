//! PKCS#12 files for partners whose stacks want one (Java `KeyStore`
//! "PKCS12", .NET `X509Certificate2`): the private key with its chain
//! (leaf, issuing CA), encrypted with PBES2 (PBKDF2-HMAC-SHA256 +
//! AES-256-CBC) and sealed with an HMAC-SHA256 MAC — the format OpenSSL 3,
//! Java 11+ and .NET read — under a random password that is written beside
//! it. `legacy` uses PKCS#12's 3DES instead, for Java 8-era readers.

use p12_keystore::{Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm};
use p12_keystore::{PrivateKey, PrivateKeyChain};
use rustls_pki_types::CertificateDer;

use super::{CaError, invalid};

/// Iterations of the key derivation (what the JDK writes by default).
pub const ITERATIONS: u32 = 10_000;

/// A fresh password: 24 random bytes, base64url (32 characters).
pub fn random_password() -> String {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCS#12 bytes of `key_pkcs8_der` and `chain` (leaf first) under
/// `alias`, encrypted with `password`.
pub fn build(
    alias: &str,
    key_pkcs8_der: &[u8],
    chain: &[CertificateDer<'_>],
    password: &str,
    legacy: bool,
) -> Result<Vec<u8>, CaError> {
    let key = PrivateKey::from_der(key_pkcs8_der)
        .map_err(|e| invalid(format!("PKCS#12: the private key is not PKCS#8: {e}")))?;
    let certs = chain
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("PKCS#12: a chain certificate does not parse: {e}")))?;
    let key_id = super::fingerprint(chain.first().map(|c| c.as_ref()).unwrap_or_default());
    let mut store = KeyStore::new();
    store.add_entry(
        alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
            hex::decode(&key_id).unwrap_or_default(),
            key,
            certs,
        )),
    );
    let writer = store.writer(password).encryption_iterations(ITERATIONS);
    let writer = if legacy {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .mac_algorithm(MacAlgorithm::HmacSha1)
    } else {
        writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .mac_algorithm(MacAlgorithm::HmacSha256)
    };
    writer
        .write()
        .map_err(|e| invalid(format!("PKCS#12 could not be written: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_store_reads_back_with_its_password_only() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["acme".into()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "acme");
        let cert = p.self_signed(&key).unwrap();
        let pass = random_password();
        assert_eq!(pass.len(), 32);
        let bytes = build(
            "acme",
            &key.serialize_der(),
            &[cert.der().clone()],
            &pass,
            false,
        )
        .unwrap();
        let store = KeyStore::from_pkcs12(&bytes, &pass, p12_keystore::Pkcs12ImportPolicy::Relaxed)
            .unwrap();
        let (_, chain) = store.private_key_chain().unwrap();
        assert_eq!(chain.certs()[0].as_der(), cert.der().as_ref());
        assert!(
            KeyStore::from_pkcs12(&bytes, "wrong", p12_keystore::Pkcs12ImportPolicy::Relaxed)
                .is_err()
        );
    }
}
