//! The stored record: the canonical, versioned byte encoding of an event
//! with its sequence number (what the hash chain covers), the chain hash,
//! and the JSON line form used by `log export` and the admin socket.
//!
//! The encoding is specified in `docs/journal.md` so that an outside tool can
//! recompute every hash; change it only by adding a new version byte.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{Decision, Event, EventKind};

/// Version byte of a canonical record without extension fields.
pub const FORMAT_VERSION: u8 = 1;
/// Version byte of a canonical record with extension fields: version 1's
/// fields, then a sorted list of named fields (see `docs/journal.md`).
pub const FORMAT_VERSION_2: u8 = 2;
/// Extension fields in one record at most (a decoder refuses more).
const MAX_EXTENSIONS: usize = 64;
/// The `prev_hash` of the first record ever written (sequence number 1).
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];
/// Length of a chain hash (SHA-256).
pub const HASH_LEN: usize = 32;

/// One journal record: the event plus what the journal adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub event: Event,
}

/// Why stored bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn kind_code(k: EventKind) -> u8 {
    match k {
        EventKind::Exchange => 1,
        EventKind::Handshake => 2,
        EventKind::HandshakeAggregate => 3,
        EventKind::Alert => 4,
        EventKind::Admin => 5,
        EventKind::MirrorDiff => 6,
    }
}

fn kind_from(c: u8) -> Option<EventKind> {
    Some(match c {
        1 => EventKind::Exchange,
        2 => EventKind::Handshake,
        3 => EventKind::HandshakeAggregate,
        4 => EventKind::Alert,
        5 => EventKind::Admin,
        6 => EventKind::MirrorDiff,
        _ => return None,
    })
}

fn decision_code(d: Decision) -> u8 {
    match d {
        Decision::Allowed => 1,
        Decision::Denied => 2,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// The named extension fields of an event, sorted by name (bytewise),
/// each value as text.
pub fn extensions(e: &Event) -> Vec<(&'static str, String)> {
    let mut x = Vec::new();
    if e.attempts != 0 {
        x.push(("attempts", e.attempts.to_string()));
    }
    if let Some(ep) = &e.upstream_endpoint {
        x.push(("upstream_endpoint", ep.clone()));
    }
    for (name, value) in [
        ("issuer", &e.issuer),
        ("signature", &e.signature),
        ("signature_base", &e.signature_base),
        ("signature_keyid", &e.signature_keyid),
        ("value_amount", &e.value_amount),
        ("value_currency", &e.value_currency),
    ] {
        if let Some(v) = value {
            x.push((name, v.clone()));
        }
    }
    if let Some(side) = &e.split_side {
        x.push(("split_side", side.clone()));
    }
    x.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    x
}

/// The format version `e` is encoded with: 1 without extension fields, 2 with.
pub fn version_of(e: &Event) -> u8 {
    if e.attempts != 0
        || e.upstream_endpoint.is_some()
        || e.issuer.is_some()
        || e.signature.is_some()
        || e.signature_base.is_some()
        || e.signature_keyid.is_some()
        || e.value_amount.is_some()
        || e.value_currency.is_some()
        || e.split_side.is_some()
    {
        FORMAT_VERSION_2
    } else {
        FORMAT_VERSION
    }
}

/// The canonical bytes of record `seq` holding `e`: version 1 when the
/// event has no extension field (the bytes are exactly version 1's), else
/// version 2 (version 1's fields, then `u16` count and the sorted
/// `(name, value)` pairs).
pub fn encode(seq: u64, e: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let version = version_of(e);
    out.push(version);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&e.time_ms.to_be_bytes());
    out.push(kind_code(e.kind));
    out.push(decision_code(e.decision));
    put_str(&mut out, &e.node);
    put_opt_str(&mut out, &e.partner);
    put_opt_str(&mut out, &e.cert_serial);
    put_opt_str(&mut out, &e.cert_fingerprint);
    put_opt_str(&mut out, &e.client_addr);
    put_opt_str(&mut out, &e.tls_version);
    put_opt_str(&mut out, &e.method);
    put_opt_str(&mut out, &e.path);
    put_opt_str(&mut out, &e.route);
    put_opt_str(&mut out, &e.upstream);
    put_opt_str(&mut out, &e.reason);
    match e.status {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&s.to_be_bytes());
        }
    }
    out.extend_from_slice(&e.request_bytes.to_be_bytes());
    out.extend_from_slice(&e.response_bytes.to_be_bytes());
    out.extend_from_slice(&e.duration_us.to_be_bytes());
    put_opt_str(&mut out, &e.request_id);
    put_opt_str(&mut out, &e.detail);
    if version == FORMAT_VERSION_2 {
        let x = extensions(e);
        out.extend_from_slice(&(x.len() as u16).to_be_bytes());
        for (name, value) in &x {
            put_str(&mut out, name);
            put_str(&mut out, value);
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError(format!("truncated at {what}")));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let len = u32::from_be_bytes(self.arr(what)?) as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }
    fn opt_string(&mut self, what: &str) -> Result<Option<String>, DecodeError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.string(what).map(Some),
            t => Err(DecodeError(format!("{what} has bad presence tag {t}"))),
        }
    }
}

/// Decodes canonical bytes into (sequence number, event).
pub fn decode(bytes: &[u8]) -> Result<(u64, Event), DecodeError> {
    let mut r = Reader { b: bytes };
    let v = r.u8("version")?;
    if v != FORMAT_VERSION && v != FORMAT_VERSION_2 {
        return Err(DecodeError(format!("unknown format version {v}")));
    }
    let seq = r.u64("seq")?;
    let time_ms = i64::from_be_bytes(r.arr("time_ms")?);
    let kind = r.u8("kind")?;
    let kind = kind_from(kind).ok_or_else(|| DecodeError(format!("unknown kind code {kind}")))?;
    let decision = match r.u8("decision")? {
        1 => Decision::Allowed,
        2 => Decision::Denied,
        d => return Err(DecodeError(format!("unknown decision code {d}"))),
    };
    let node = r.string("node")?;
    let partner = r.opt_string("partner")?;
    let cert_serial = r.opt_string("cert_serial")?;
    let cert_fingerprint = r.opt_string("cert_fingerprint")?;
    let client_addr = r.opt_string("client_addr")?;
    let tls_version = r.opt_string("tls_version")?;
    let method = r.opt_string("method")?;
    let path = r.opt_string("path")?;
    let route = r.opt_string("route")?;
    let upstream = r.opt_string("upstream")?;
    let reason = r.opt_string("reason")?;
    let status = match r.u8("status")? {
        0 => None,
        1 => Some(u16::from_be_bytes(r.arr("status")?)),
        t => return Err(DecodeError(format!("status has bad presence tag {t}"))),
    };
    let request_bytes = r.u64("request_bytes")?;
    let response_bytes = r.u64("response_bytes")?;
    let duration_us = r.u64("duration_us")?;
    let request_id = r.opt_string("request_id")?;
    let detail = r.opt_string("detail")?;
    let mut upstream_endpoint = None;
    let mut attempts = 0;
    let [
        mut issuer,
        mut signature,
        mut signature_base,
        mut signature_keyid,
        mut value_amount,
        mut value_currency,
    ]: [Option<String>; 6] = Default::default();
    let mut split_side = None;
    if v == FORMAT_VERSION_2 {
        let n = u16::from_be_bytes(r.arr("extension count")?) as usize;
        if n == 0 || n > MAX_EXTENSIONS {
            return Err(DecodeError(format!("version 2 with {n} extension fields")));
        }
        let mut previous: Option<String> = None;
        for _ in 0..n {
            let name = r.string("extension name")?;
            let value = r.string("extension value")?;
            if previous
                .as_deref()
                .is_some_and(|p| p.as_bytes() >= name.as_bytes())
            {
                return Err(DecodeError(format!(
                    "extension field `{name}` out of order or repeated"
                )));
            }
            match name.as_str() {
                "attempts" => {
                    attempts = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n != 0)
                        .ok_or_else(|| DecodeError(format!("attempts `{value}` is not a count")))?;
                }
                "upstream_endpoint" => upstream_endpoint = Some(value),
                "issuer" => issuer = Some(value),
                "signature" => signature = Some(value),
                "signature_base" => signature_base = Some(value),
                "signature_keyid" => signature_keyid = Some(value),
                "value_amount" => value_amount = Some(value),
                "value_currency" => value_currency = Some(value),
                "split_side" => split_side = Some(value),
                // A field a later gatehouse adds: this one cannot show it
                // (nor re-encode it), so it says so instead of dropping it.
                _ => {
                    return Err(DecodeError(format!(
                        "unknown extension field `{name}` (written by a newer gatehouse)"
                    )));
                }
            }
            previous = Some(name);
        }
    }
    if !r.b.is_empty() {
        return Err(DecodeError(format!("{} trailing bytes", r.b.len())));
    }
    Ok((
        seq,
        Event {
            kind,
            time_ms,
            node,
            partner,
            cert_serial,
            cert_fingerprint,
            client_addr,
            tls_version,
            method,
            path,
            route,
            upstream,
            decision,
            reason,
            status,
            request_bytes,
            response_bytes,
            duration_us,
            request_id,
            detail,
            upstream_endpoint,
            attempts,
            issuer,
            value_amount,
            value_currency,
            signature_keyid,
            signature_base,
            signature,
            split_side,
        },
    ))
}

/// Why one link of the hash chain does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BrokenLink {
    #[error("prev_hash does not match the previous record's hash")]
    PrevMismatch,
    #[error("the record's content does not match its hash (altered)")]
    Altered,
}

/// The chain check of one record: its `prev_hash` is the hash of the
/// record before it (when that one is known), and its `hash` covers
/// `prev_hash` and its canonical bytes.
pub fn check_link(
    before: Option<&[u8; 32]>,
    prev_hash: &[u8; 32],
    canonical: &[u8],
    hash: &[u8; 32],
) -> Result<(), BrokenLink> {
    if before.is_some_and(|b| b != prev_hash) {
        return Err(BrokenLink::PrevMismatch);
    }
    if chain_hash(prev_hash, canonical) != *hash {
        return Err(BrokenLink::Altered);
    }
    Ok(())
}

/// `SHA-256(prev_hash || canonical)`.
pub fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// The sequence number inside canonical bytes, without decoding the rest.
pub fn canonical_seq(canonical: &[u8]) -> Option<u64> {
    if canonical.len() < 9 || !matches!(canonical[0], FORMAT_VERSION | FORMAT_VERSION_2) {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&canonical[1..9]);
    Some(u64::from_be_bytes(a))
}

/// The bytes stored under a record's key: `prev_hash || hash || canonical`.
pub fn stored_value(prev: &[u8; 32], hash: &[u8; 32], canonical: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + canonical.len());
    v.extend_from_slice(prev);
    v.extend_from_slice(hash);
    v.extend_from_slice(canonical);
    v
}

/// Splits a stored value into (prev_hash, hash, canonical).
pub fn split_stored(v: &[u8]) -> Option<([u8; 32], [u8; 32], &[u8])> {
    if v.len() < 64 + 9 {
        return None;
    }
    let mut prev = [0u8; 32];
    let mut hash = [0u8; 32];
    prev.copy_from_slice(&v[..32]);
    hash.copy_from_slice(&v[32..64]);
    Some((prev, hash, &v[64..]))
}

impl Record {
    /// Decodes a stored value (no hash check; `verify` does that).
    pub fn from_stored(v: &[u8]) -> Result<Record, DecodeError> {
        let (prev_hash, hash, canonical) =
            split_stored(v).ok_or_else(|| DecodeError("stored value too short".into()))?;
        let (seq, event) = decode(canonical)?;
        Ok(Record {
            seq,
            prev_hash,
            hash,
            event,
        })
    }

    /// The JSON line form.
    pub fn to_line(&self) -> RecordLine {
        RecordLine {
            v: version_of(&self.event),
            ext: extensions(&self.event)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            seq: self.seq,
            time: crate::journal::fmt_time_ms(self.event.time_ms),
            event: self.event.clone(),
            prev_hash: hex::encode(self.prev_hash),
            hash: hex::encode(self.hash),
        }
    }
}

/// A record as one JSON object (`"type":"record"` is added by the enclosing line enum).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordLine {
    /// Canonical format version.
    pub v: u8,
    pub seq: u64,
    /// `time_ms` as RFC 3339 (for people; `time_ms` is authoritative).
    pub time: String,
    #[serde(flatten)]
    pub event: Event,
    /// Version 2's extension fields, by name, as they are hashed (so that
    /// an outside tool can check a record without knowing each field).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ext: std::collections::BTreeMap<String, String>,
    pub prev_hash: String,
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn full_event() -> Event {
        Event {
            kind: EventKind::Exchange,
            time_ms: 1_800_000_000_123,
            node: "gatehouse-1".into(),
            partner: Some("acme".into()),
            cert_serial: Some("0a1b2c".into()),
            cert_fingerprint: Some("ab".repeat(32)),
            client_addr: Some("192.0.2.7:51234".into()),
            tls_version: Some("TLSv1.3".into()),
            method: Some("POST".into()),
            path: Some("/v1/orders/42?x=é".into()),
            route: Some("POST /v1/orders".into()),
            upstream: Some("orders".into()),
            decision: Decision::Denied,
            reason: Some(crate::reason::Reason::RouteNotGranted.code().into()),
            status: Some(403),
            request_bytes: 1234,
            response_bytes: u64::MAX,
            duration_us: 987_654,
            request_id: Some("req-1".into()),
            detail: Some("line1\nline2".into()),
            upstream_endpoint: None,
            attempts: 0,
            issuer: None,
            value_amount: None,
            value_currency: None,
            signature_keyid: None,
            signature_base: None,
            signature: None,
            split_side: None,
        }
    }

    #[test]
    fn without_extensions_the_bytes_are_version_1s() {
        let e = full_event();
        let bytes = encode(9, &e);
        assert_eq!(bytes[0], FORMAT_VERSION);
        // Version 1 ends with `detail`: nothing follows it.
        assert!(bytes.ends_with(b"line1\nline2"));
        assert_eq!(
            Record::from_stored(&stored_value(&GENESIS_HASH, &[0; 32], &bytes))
                .map(|r| r.to_line().v),
            Ok(1)
        );
    }

    #[test]
    fn the_issuer_of_a_partners_own_ca_is_a_named_field() {
        let mut e = full_event();
        e.issuer = Some("O=bank, CN=bank Root CA".into());
        let bytes = encode(3, &e);
        assert_eq!(bytes[0], FORMAT_VERSION_2);
        assert_eq!(
            extensions(&e),
            vec![("issuer", "O=bank, CN=bank Root CA".to_string())]
        );
        let (seq, back) = decode(&bytes).unwrap();
        assert_eq!((seq, back), (3, e));
    }

    #[test]
    fn version_2_appends_sorted_named_fields() {
        let mut e = full_event();
        e.attempts = 2;
        e.upstream_endpoint = Some("10.0.0.11:9443".into());
        let bytes = encode(9, &e);
        assert_eq!(bytes[0], FORMAT_VERSION_2);
        let v1_part = {
            let mut plain = e.clone();
            plain.attempts = 0;
            plain.upstream_endpoint = None;
            encode(9, &plain)
        };
        // Version 1's fields, byte for byte, after the version byte.
        assert_eq!(&bytes[1..v1_part.len()], &v1_part[1..]);
        let mut tail = vec![0, 2];
        for (k, v) in [("attempts", "2"), ("upstream_endpoint", "10.0.0.11:9443")] {
            tail.extend_from_slice(&(k.len() as u32).to_be_bytes());
            tail.extend_from_slice(k.as_bytes());
            tail.extend_from_slice(&(v.len() as u32).to_be_bytes());
            tail.extend_from_slice(v.as_bytes());
        }
        assert_eq!(&bytes[v1_part.len()..], &tail[..]);
        assert_eq!(decode(&bytes).unwrap(), (9, e.clone()));
        assert_eq!(canonical_seq(&bytes), Some(9));
        // Out of order, repeated, unknown or empty lists are refused.
        let mut swapped = v1_part.clone();
        swapped[0] = FORMAT_VERSION_2;
        let mut bad = swapped.clone();
        bad.extend_from_slice(&[0, 0]);
        assert!(decode(&bad).is_err());
        let mut unknown = swapped.clone();
        unknown.extend_from_slice(&[0, 1, 0, 0, 0, 1, b'z', 0, 0, 0, 1, b'1']);
        assert!(
            decode(&unknown)
                .unwrap_err()
                .0
                .contains("unknown extension")
        );
        let line = Record::from_stored(&stored_value(&GENESIS_HASH, &[0; 32], &bytes))
            .unwrap()
            .to_line();
        assert_eq!(line.v, 2);
        assert_eq!(line.ext["attempts"], "2");
        let text = serde_json::to_string(&line).unwrap();
        let back: RecordLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back, line);
        assert_eq!(encode(back.seq, &back.event), bytes);
    }

    #[test]
    fn value_and_signature_fields_are_version_2_and_round_trip() {
        let mut e = full_event();
        e.value_amount = Some("10000.00".into());
        e.value_currency = Some("EUR".into());
        e.signature_keyid = Some("ab".repeat(32));
        e.signature_base = Some("\"@method\": POST\n\"@signature-params\": ()".into());
        e.signature = Some("ed25519:AAAA".into());
        let bytes = encode(7, &e);
        assert_eq!(bytes[0], FORMAT_VERSION_2);
        assert_eq!(decode(&bytes).unwrap(), (7, e.clone()));
        let names: Vec<&str> = extensions(&e).iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "signature",
                "signature_base",
                "signature_keyid",
                "value_amount",
                "value_currency"
            ]
        );
    }

    #[test]
    fn the_split_side_travels_as_a_named_field() {
        let mut e = full_event();
        e.split_side = Some("orders-v2".into());
        let bytes = encode(4, &e);
        assert_eq!(bytes[0], FORMAT_VERSION_2);
        assert_eq!(decode(&bytes).unwrap(), (4, e.clone()));
        let line = Record::from_stored(&stored_value(&GENESIS_HASH, &[0; 32], &bytes))
            .unwrap()
            .to_line();
        assert_eq!(line.ext["split_side"], "orders-v2");
    }

    #[test]
    fn every_field_round_trips() {
        let e = full_event();
        let bytes = encode(42, &e);
        assert_eq!(decode(&bytes).unwrap(), (42, e.clone()));
        assert_eq!(canonical_seq(&bytes), Some(42));
        let empty = Event::new(EventKind::Alert, "n", Decision::Allowed);
        assert_eq!(decode(&encode(1, &empty)).unwrap(), (1, empty));
        for kind in [
            EventKind::Exchange,
            EventKind::Handshake,
            EventKind::HandshakeAggregate,
            EventKind::Alert,
            EventKind::Admin,
            EventKind::MirrorDiff,
        ] {
            let mut k = e.clone();
            k.kind = kind;
            assert_eq!(decode(&encode(7, &k)).unwrap().1.kind, kind);
        }
    }

    #[test]
    fn none_and_empty_string_encode_differently() {
        let mut a = full_event();
        a.partner = None;
        let mut b = full_event();
        b.partner = Some(String::new());
        assert_ne!(encode(1, &a), encode(1, &b));
    }

    #[test]
    fn corrupt_bytes_are_refused() {
        let bytes = encode(1, &full_event());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(decode(&v2).is_err());
    }

    #[test]
    fn json_line_round_trips() {
        let e = full_event();
        let canonical = encode(5, &e);
        let hash = chain_hash(&GENESIS_HASH, &canonical);
        let r = Record::from_stored(&stored_value(&GENESIS_HASH, &hash, &canonical)).unwrap();
        let line = r.to_line();
        let text = serde_json::to_string(&line).unwrap();
        let back: RecordLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back, line);
        assert_eq!(back.event, e);
    }
}
