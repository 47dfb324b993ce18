//! Micro-benchmark of the per-request cost of the high-value checks (no
//! criterion): reading a call's value from a JSON body and reserving it in
//! the day's total (then giving it back), and verifying an RFC 9421
//! signature (Content-Digest, signature base, the public-key check) with
//! ECDSA P-256, Ed25519 and RSA-PSS-SHA512 (2048-bit). Times are the
//! thread's CPU time per operation, so other work on the machine does not
//! inflate them. Run with `cargo run --release --example bench_risk`.

use std::hint::black_box;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use gatehouse::risk::signature::{self, KeyRef, Message, sf};
use gatehouse::risk::{Ledger, ValueSpec, read_value};
use http::HeaderMap;

fn cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn per_op(name: &str, iters: usize, mut f: impl FnMut(usize)) {
    for i in 0..iters / 10 {
        f(i);
    }
    let start = cpu_secs();
    for i in 0..iters {
        f(i);
    }
    let us = (cpu_secs() - start) * 1e6 / iters as f64;
    println!("{name:<44} {us:>9.2} us CPU per request");
}

const BODY: &[u8] = br#"{"amount": "1234.56", "currency": "EUR", "to": "DE89370400440532013000", "reference": "invoice 2026-118"}"#;
const NOW: i64 = 1_800_000_000;

/// A signed request's headers and the key that verifies it.
fn signed(alg: &str) -> (HeaderMap, Vec<u8>) {
    let rng = SystemRandom::new();
    let mut headers = HeaderMap::new();
    let d = digest::digest(&digest::SHA256, BODY);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    headers.insert(
        "content-digest",
        format!("sha-256=:{}:", b64(d.as_ref())).parse().unwrap(),
    );
    let input = format!(
        r#"("@method" "@authority" "@path" "content-digest");created={NOW};nonce="n";keyid="k";alg="{alg}""#
    );
    let dict = sf::parse_dictionary(&format!("s={input}")).unwrap();
    let sf::Member::InnerList(items, params) = &dict[0].1 else {
        unreachable!()
    };
    let msg = Message {
        method: "POST",
        authority: "broker.example",
        path: "/v1/transfers",
        query: None,
        headers: &headers,
        body: BODY,
    };
    let base = signature::signature_base(&msg, items, params).unwrap();
    let (signature, spki) = match alg {
        "ecdsa-p256-sha256" => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let k = EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                &kp.serialize_der(),
            )
            .unwrap();
            let s = k.sign(&rng, base.as_bytes()).unwrap().as_ref().to_vec();
            (s, rcgen::PublicKeyData::subject_public_key_info(&kp))
        }
        "ed25519" => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let k = Ed25519KeyPair::from_pkcs8(&kp.serialize_der()).unwrap();
            let s = k.sign(base.as_bytes()).as_ref().to_vec();
            (s, rcgen::PublicKeyData::subject_public_key_info(&kp))
        }
        _ => {
            let k = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let mut s = vec![0; k.public_modulus_len()];
            k.sign(&sig::RSA_PSS_SHA512, &rng, base.as_bytes(), &mut s)
                .unwrap();
            // SubjectPublicKeyInfo of rsaEncryption around the PKCS#1 key.
            let pkcs1 = k.public_key().as_ref().to_vec();
            let spki = yasna_like_rsa_spki(&pkcs1);
            (s, spki)
        }
    };
    headers.insert("signature-input", format!("s={input}").parse().unwrap());
    headers.insert(
        "signature",
        format!("s=:{}:", b64(&signature)).parse().unwrap(),
    );
    (headers, spki)
}

/// DER of `SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING pkcs1 }`.
fn yasna_like_rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn len(n: usize) -> Vec<u8> {
        if n < 128 {
            vec![n as u8]
        } else if n < 256 {
            vec![0x81, n as u8]
        } else {
            vec![0x82, (n >> 8) as u8, n as u8]
        }
    }
    let alg: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    bits.extend(len(pkcs1.len() + 1));
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    out.extend(len(alg.len() + bits.len()));
    out.extend_from_slice(alg);
    out.extend(bits);
    out
}

fn main() {
    let spec = ValueSpec {
        amount: "/amount".into(),
        currency: "/currency".into(),
    };
    let ledger = Ledger::default();
    let per_day = Some(gatehouse::risk::Amount::parse("900000000000").unwrap());
    per_op("value: read amount + currency from JSON", 200_000, |_| {
        black_box(read_value(black_box(BODY), &spec).unwrap());
    });
    per_op("value: read + reserve + give back (1 node)", 200_000, |i| {
        let v = read_value(black_box(BODY), &spec).unwrap();
        let partner = if i % 2 == 0 { "acme" } else { "beta" };
        ledger
            .reserve(partner, &v.currency, v.amount, per_day, 1)
            .unwrap();
        ledger.give_back(partner, &v.currency, v.amount, 1);
    });
    for (alg, iters) in [
        ("ecdsa-p256-sha256", 20_000),
        ("ed25519", 20_000),
        ("rsa-pss-sha512", 20_000),
    ] {
        let (headers, spki) = signed(alg);
        let msg = Message {
            method: "POST",
            authority: "broker.example",
            path: "/v1/transfers",
            query: None,
            headers: &headers,
            body: BODY,
        };
        let keys = [KeyRef {
            id: "k",
            spki: &spki,
        }];
        signature::verify(&msg, &keys, NOW).expect("verifies");
        per_op(&format!("signature: verify {alg}"), iters, |_| {
            black_box(signature::verify(black_box(&msg), &keys, NOW).unwrap());
        });
    }
}
