//! `Reason`: the closed set of reasons the broker refuses for, at every
//! layer (TLS handshake, admission, framing and target, policy, limits,
//! relay, journal, certificate renewal). Each reason knows its code (the
//! journal record's `reason`, the metric label and the partner's JSON
//! `error`), its HTTP status, whether the connection closes after it and
//! the `Retry-After` it carries. The code strings are written here and
//! nowhere else in `src/`; a test holds the README's reason table to this
//! list.

use http::StatusCode;

/// Why the broker refused (or, for [`Reason::Incomplete`] and
/// [`Reason::UpstreamBodyError`] on a streamed response, why an allowed
/// exchange did not end whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // --- the TLS handshake (no HTTP status: the handshake is refused)
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The client's address already has `max_pending_handshakes_per_addr`
    /// handshakes in progress.
    TooManyPendingHandshakes,
    /// The client presented no certificate: such a connection gets the
    /// enrolment (EST) paths and nothing else.
    NoCertificate,
    /// The client closed the connection during the handshake.
    ClientClosed,
    /// The client sent a TLS alert.
    ClientAlert,
    /// No protocol in common (ALPN).
    NoAlpn,
    /// No protocol version or cipher suite in common.
    Incompatible,
    /// Any other TLS failure.
    TlsError,
    /// The certificate is not yet valid.
    NotYetValid,
    /// The certificate does not chain to a CA the broker trusts.
    UnknownCa,
    /// A signature in the chain does not verify.
    BadSignature,
    /// The certificate is not for client authentication (EKU).
    WrongKeyUsage,
    /// The certificate cannot be parsed.
    BadCertificate,
    /// Any other certificate failure.
    InvalidCertificate,
    /// The certificate has no `spiffe://<trust-domain>/partner/<id>` URI SAN.
    NoPartnerIdentity,
    /// The certificate has more than one URI SAN.
    AmbiguousIdentity,
    /// The certificate's URI SAN names another trust domain.
    ForeignIdentity,
    /// A certificate from a partner's own CA whose key is not one pinned
    /// for that partner.
    KeyPinMismatch,

    // --- the certificate and partner, at the handshake and on every request
    /// The certificate has expired.
    Expired,
    /// The certificate is revoked.
    Revoked,
    /// The certificate was replaced by a renewal and its overlap is over.
    Superseded,
    /// The certificate's serial is not in the inventory.
    UnknownCertificate,
    /// The certificate's fingerprint differs from the one recorded at issue.
    CertificateMismatch,
    /// The inventory records the certificate for another partner.
    CertificatePartnerMismatch,
    /// No partner file for the certificate's partner.
    UnknownPartner,
    /// The partner is suspended.
    PartnerSuspended,
    /// In a fleet: an announced revocation or suspension is not in this
    /// node's files yet.
    FleetSyncPending,

    // --- the request: journal, framing, target
    /// The journal cannot take records: fail closed.
    JournalUnavailable,
    /// `Content-Length` values spelled differently.
    AmbiguousFraming,
    /// An absolute-form or authority-form target on HTTP/1.1, or an
    /// upstream URI that cannot be built.
    BadTarget,
    /// The request-target is not `/path[?query]`.
    NotOriginForm,
    /// A path segment an upstream may read as `.` or `..`.
    DotSegment,
    /// An encoded `/` or `\` in the path.
    EncodedSeparator,
    /// A raw `\` in the path.
    Backslash,
    /// A control character in the request-target.
    ControlCharacter,
    /// `%` not followed by two hex digits in the path.
    BadPercentEncoding,
    /// `//` in the path.
    EmptySegment,
    /// Percent-encoding nested too deep.
    NestedEncoding,
    /// The request-target is longer than 8192 bytes.
    TargetTooLong,

    // --- policy
    /// No route grants this method and path to this partner.
    RouteNotGranted,

    // --- limits
    /// The partner's or route's `requests_per_minute` (and `burst`).
    RequestsPerMinute,
    /// The partner's or route's `requests_per_day`.
    RequestsPerDay,
    /// The partner's or route's `max_concurrent`.
    MaxConcurrent,
    /// The anomaly detector throttles the partner.
    Throttled,
    /// In a fleet with `on_store_failure = "deny"`: the limit store does not
    /// answer.
    LimitStoreUnavailable,
    /// The declared or streamed body is over the route's (or the server's) limit.
    BodyTooLarge,

    // --- value limits (routes with a `value`)
    /// The call's amount is over the partner's `per_call` for its currency.
    ValueLimitPerCall,
    /// The call's amount would take the UTC day's total past the partner's
    /// `per_day` for its currency.
    ValueLimitDaily,
    /// The amount or currency cannot be read from the body (not JSON, a
    /// field missing, a bad amount, a currency without a limit).
    ValueUnreadable,

    // --- signed requests (routes that require a signature)
    /// The route requires an RFC 9421 signature and the request has none.
    SignatureRequired,
    /// The signature is wrong, stale, replayed, or signed with a key that
    /// is not the partner's (the JSON `problem` says which).
    SignatureInvalid,

    // --- the upstream leg
    /// The route names an upstream the configuration does not have.
    UpstreamUnknown,
    /// The upstream identity token could not be signed (fail closed).
    IdentitySigningFailed,
    /// No endpoint could be reached (on every attempt), or none takes
    /// traffic (all ejected, failed by health checks, or none resolved).
    UpstreamUnavailable,
    /// The pool's `max_in_flight` is reached and its queue is full, or the
    /// request waited in the queue past its timeout.
    UpstreamSaturated,
    /// No response head within the upstream's `per_try_timeout` (on the
    /// last attempt) or `response_timeout` (all attempts).
    UpstreamTimeout,
    /// The upstream's certificate failed verification.
    UpstreamTls,
    /// Any other failure on the upstream leg.
    UpstreamError,
    /// The upstream's body failed or was shorter than announced.
    UpstreamBodyError,
    /// The partner stopped reading a streamed response (or went away)
    /// before its end.
    Incomplete,

    // --- self-service renewal
    /// The partner renewed less than a minute ago.
    RenewalRateLimited,
    /// The CSR body is over its limit.
    CsrTooLarge,
    /// The request body could not be read.
    BadBody,
    /// The CSR is not a valid, self-signed PKCS#10 request.
    BadCsr,
    /// The certificate's renewal window has not opened yet.
    RenewalNotYetAllowed,
    /// The certificate is not in a state that may be renewed.
    NotRenewable,
    /// The certificate was already renewed.
    AlreadyRenewed,
    /// Signing or recording the renewed certificate failed.
    RenewalFailed,

    // --- enrolment (EST) with a one-time invitation
    /// No or malformed HTTP Basic credentials, no invitation for that
    /// partner, or a wrong secret.
    EnrolmentUnauthorized,
    /// The invitation's secret was right but the invitation has expired.
    InvitationExpired,
    /// The invitation's secret was right but it was already used.
    InvitationUsed,
    /// The invitation is locked after too many wrong secrets.
    InvitationLocked,
    /// Too many enrolment attempts from this address.
    EnrolmentRateLimited,
}

impl Reason {
    /// Every reason, in the order of the README's table.
    pub const ALL: &[Reason] = &[
        Reason::HandshakeTimeout,
        Reason::TooManyPendingHandshakes,
        Reason::NoCertificate,
        Reason::ClientClosed,
        Reason::ClientAlert,
        Reason::NoAlpn,
        Reason::Incompatible,
        Reason::TlsError,
        Reason::NotYetValid,
        Reason::UnknownCa,
        Reason::BadSignature,
        Reason::WrongKeyUsage,
        Reason::BadCertificate,
        Reason::InvalidCertificate,
        Reason::NoPartnerIdentity,
        Reason::AmbiguousIdentity,
        Reason::ForeignIdentity,
        Reason::KeyPinMismatch,
        Reason::Expired,
        Reason::Revoked,
        Reason::Superseded,
        Reason::UnknownCertificate,
        Reason::CertificateMismatch,
        Reason::CertificatePartnerMismatch,
        Reason::UnknownPartner,
        Reason::PartnerSuspended,
        Reason::FleetSyncPending,
        Reason::JournalUnavailable,
        Reason::AmbiguousFraming,
        Reason::BadTarget,
        Reason::NotOriginForm,
        Reason::DotSegment,
        Reason::EncodedSeparator,
        Reason::Backslash,
        Reason::ControlCharacter,
        Reason::BadPercentEncoding,
        Reason::EmptySegment,
        Reason::NestedEncoding,
        Reason::TargetTooLong,
        Reason::RouteNotGranted,
        Reason::RequestsPerMinute,
        Reason::RequestsPerDay,
        Reason::MaxConcurrent,
        Reason::Throttled,
        Reason::LimitStoreUnavailable,
        Reason::BodyTooLarge,
        Reason::ValueLimitPerCall,
        Reason::ValueLimitDaily,
        Reason::ValueUnreadable,
        Reason::SignatureRequired,
        Reason::SignatureInvalid,
        Reason::UpstreamUnknown,
        Reason::IdentitySigningFailed,
        Reason::UpstreamUnavailable,
        Reason::UpstreamSaturated,
        Reason::UpstreamTimeout,
        Reason::UpstreamTls,
        Reason::UpstreamError,
        Reason::UpstreamBodyError,
        Reason::Incomplete,
        Reason::RenewalRateLimited,
        Reason::CsrTooLarge,
        Reason::BadBody,
        Reason::BadCsr,
        Reason::RenewalNotYetAllowed,
        Reason::NotRenewable,
        Reason::AlreadyRenewed,
        Reason::RenewalFailed,
        Reason::EnrolmentUnauthorized,
        Reason::InvitationExpired,
        Reason::InvitationUsed,
        Reason::InvitationLocked,
        Reason::EnrolmentRateLimited,
    ];

    /// The stable code: the journal record's `reason`, the metric label and
    /// (except for limits, see [`Reason::json_error`]) the JSON `error`.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::TooManyPendingHandshakes => "too_many_pending_handshakes",
            Reason::NoCertificate => "no_certificate",
            Reason::ClientClosed => "client_closed",
            Reason::ClientAlert => "client_alert",
            Reason::NoAlpn => "no_alpn",
            Reason::Incompatible => "incompatible",
            Reason::TlsError => "tls_error",
            Reason::NotYetValid => "not_yet_valid",
            Reason::UnknownCa => "unknown_ca",
            Reason::BadSignature => "bad_signature",
            Reason::WrongKeyUsage => "wrong_key_usage",
            Reason::BadCertificate => "bad_certificate",
            Reason::InvalidCertificate => "invalid_certificate",
            Reason::NoPartnerIdentity => "no_partner_identity",
            Reason::AmbiguousIdentity => "ambiguous_identity",
            Reason::ForeignIdentity => "foreign_identity",
            Reason::KeyPinMismatch => "key_pin_mismatch",
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::Superseded => "superseded",
            Reason::UnknownCertificate => "unknown_certificate",
            Reason::CertificateMismatch => "certificate_mismatch",
            Reason::CertificatePartnerMismatch => "certificate_partner_mismatch",
            Reason::UnknownPartner => "unknown_partner",
            Reason::PartnerSuspended => "partner_suspended",
            Reason::FleetSyncPending => "fleet_sync_pending",
            Reason::JournalUnavailable => "journal_unavailable",
            Reason::AmbiguousFraming => "ambiguous_framing",
            Reason::BadTarget => "bad_target",
            Reason::NotOriginForm => "not_origin_form",
            Reason::DotSegment => "dot_segment",
            Reason::EncodedSeparator => "encoded_separator",
            Reason::Backslash => "backslash",
            Reason::ControlCharacter => "control_character",
            Reason::BadPercentEncoding => "bad_percent_encoding",
            Reason::EmptySegment => "empty_segment",
            Reason::NestedEncoding => "nested_encoding",
            Reason::TargetTooLong => "target_too_long",
            Reason::RouteNotGranted => "route_not_granted",
            Reason::RequestsPerMinute => "requests_per_minute",
            Reason::RequestsPerDay => "requests_per_day",
            Reason::MaxConcurrent => "max_concurrent",
            Reason::Throttled => "throttled",
            Reason::LimitStoreUnavailable => "limit_store_unavailable",
            Reason::BodyTooLarge => "body_too_large",
            Reason::ValueLimitPerCall => "value_limit_per_call",
            Reason::ValueLimitDaily => "value_limit_daily",
            Reason::ValueUnreadable => "value_unreadable",
            Reason::SignatureRequired => "signature_required",
            Reason::SignatureInvalid => "signature_invalid",
            Reason::UpstreamUnknown => "upstream_unknown",
            Reason::IdentitySigningFailed => "identity_signing_failed",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamSaturated => "upstream_saturated",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamTls => "upstream_tls",
            Reason::UpstreamError => "upstream_error",
            Reason::UpstreamBodyError => "upstream_body_error",
            Reason::Incomplete => "incomplete",
            Reason::RenewalRateLimited => "renewal_rate_limited",
            Reason::CsrTooLarge => "csr_too_large",
            Reason::BadBody => "bad_body",
            Reason::BadCsr => "bad_csr",
            Reason::RenewalNotYetAllowed => "renewal_not_yet_allowed",
            Reason::NotRenewable => "not_renewable",
            Reason::AlreadyRenewed => "already_renewed",
            Reason::RenewalFailed => "renewal_failed",
            Reason::EnrolmentUnauthorized => "enrolment_unauthorized",
            Reason::InvitationExpired => "invitation_expired",
            Reason::InvitationUsed => "invitation_used",
            Reason::InvitationLocked => "invitation_locked",
            Reason::EnrolmentRateLimited => "enrolment_rate_limited",
        }
    }

    /// The HTTP status of a refusal for this reason on a request; `None`
    /// for reasons that only refuse a handshake, and for [`Reason::Incomplete`]
    /// (the upstream's status stands). Certificate and partner reasons
    /// refuse at the handshake with no status, and with 403 on a request.
    pub const fn status(self) -> Option<StatusCode> {
        use Reason::*;
        Some(match self {
            HandshakeTimeout
            | TooManyPendingHandshakes
            | ClientClosed
            | ClientAlert
            | NoAlpn
            | Incompatible
            | TlsError
            | NotYetValid
            | UnknownCa
            | BadSignature
            | WrongKeyUsage
            | BadCertificate
            | InvalidCertificate
            | NoPartnerIdentity
            | AmbiguousIdentity
            | ForeignIdentity
            | KeyPinMismatch
            | Incomplete => return None,
            Expired
            | Revoked
            | Superseded
            | UnknownCertificate
            | CertificateMismatch
            | CertificatePartnerMismatch
            | UnknownPartner
            | PartnerSuspended
            | RouteNotGranted
            | ValueLimitPerCall
            | RenewalNotYetAllowed
            | NotRenewable
            | NoCertificate
            | InvitationExpired
            | InvitationUsed
            | InvitationLocked => StatusCode::FORBIDDEN,
            EnrolmentUnauthorized => StatusCode::UNAUTHORIZED,
            FleetSyncPending
            | JournalUnavailable
            | LimitStoreUnavailable
            | UpstreamUnavailable
            | UpstreamSaturated => StatusCode::SERVICE_UNAVAILABLE,
            AmbiguousFraming | BadTarget | NotOriginForm | DotSegment | EncodedSeparator
            | Backslash | ControlCharacter | BadPercentEncoding | EmptySegment | NestedEncoding
            | TargetTooLong | BadBody | BadCsr | ValueUnreadable => StatusCode::BAD_REQUEST,
            RequestsPerMinute | RequestsPerDay | MaxConcurrent | Throttled | RenewalRateLimited
            | EnrolmentRateLimited | ValueLimitDaily => StatusCode::TOO_MANY_REQUESTS,
            BodyTooLarge | CsrTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UpstreamUnknown | UpstreamTls | UpstreamError | UpstreamBodyError => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            IdentitySigningFailed | RenewalFailed => StatusCode::INTERNAL_SERVER_ERROR,
            AlreadyRenewed => StatusCode::CONFLICT,
            SignatureRequired | SignatureInvalid => StatusCode::UNAUTHORIZED,
        })
    }

    /// Whether the connection closes after this refusal (and refuses
    /// further requests on it): a certificate or partner no longer good, a
    /// fleet that has not caught up with a revocation, framing the broker
    /// will not read past, a body it will not read to its end. Every
    /// handshake refusal closes.
    pub const fn closes_connection(self) -> bool {
        use Reason::*;
        match self {
            Expired
            | Revoked
            | Superseded
            | UnknownCertificate
            | CertificateMismatch
            | CertificatePartnerMismatch
            | UnknownPartner
            | PartnerSuspended
            | FleetSyncPending
            | AmbiguousFraming
            | BodyTooLarge
            | CsrTooLarge
            | NoCertificate => true,
            _ => self.status().is_none(),
        }
    }

    /// The `Retry-After` (seconds) a refusal for this reason carries unless
    /// the check that refused knows better (a limit knows when its next
    /// token comes): `None` for reasons that carry none by themselves.
    pub const fn retry_after_secs(self) -> Option<u64> {
        use Reason::*;
        match self {
            RequestsPerMinute
            | RequestsPerDay
            | MaxConcurrent
            | Throttled
            | RenewalRateLimited
            | EnrolmentRateLimited
            | FleetSyncPending
            | LimitStoreUnavailable
            | UpstreamUnavailable
            | UpstreamSaturated => Some(1),
            _ => None,
        }
    }

    /// The partner's JSON `error`: the code, except for the rate, quota,
    /// concurrency and throttle limits, which answer `rate_limited` with the
    /// code in `limit`.
    pub const fn json_error(self) -> &'static str {
        if self.is_rate_limit() {
            "rate_limited"
        } else {
            self.code()
        }
    }

    /// A partner's rate, quota, concurrency or throttle limit refused.
    pub const fn is_rate_limit(self) -> bool {
        matches!(
            self,
            Reason::RequestsPerMinute
                | Reason::RequestsPerDay
                | Reason::MaxConcurrent
                | Reason::Throttled
        )
    }

    /// The label of the metrics that count refusals (the code).
    pub const fn metric_label(self) -> &'static str {
        self.code()
    }

    /// The reason with this code, if there is one.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::Path;

    /// Adding a variant breaks this match until it is listed in `ALL` too
    /// (the index is its place there).
    fn place(r: Reason) -> usize {
        Reason::ALL
            .iter()
            .position(|x| *x == r)
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn every_variant_is_listed_once_with_its_own_code() {
        for r in Reason::ALL {
            // Exhaustive: a new variant is a compile error here.
            let listed = match r {
                Reason::HandshakeTimeout
                | Reason::TooManyPendingHandshakes
                | Reason::NoCertificate
                | Reason::ClientClosed
                | Reason::ClientAlert
                | Reason::NoAlpn
                | Reason::Incompatible
                | Reason::TlsError
                | Reason::NotYetValid
                | Reason::UnknownCa
                | Reason::BadSignature
                | Reason::WrongKeyUsage
                | Reason::BadCertificate
                | Reason::InvalidCertificate
                | Reason::NoPartnerIdentity
                | Reason::AmbiguousIdentity
                | Reason::ForeignIdentity
                | Reason::KeyPinMismatch
                | Reason::Expired
                | Reason::Revoked
                | Reason::Superseded
                | Reason::UnknownCertificate
                | Reason::CertificateMismatch
                | Reason::CertificatePartnerMismatch
                | Reason::UnknownPartner
                | Reason::PartnerSuspended
                | Reason::FleetSyncPending
                | Reason::JournalUnavailable
                | Reason::AmbiguousFraming
                | Reason::BadTarget
                | Reason::NotOriginForm
                | Reason::DotSegment
                | Reason::EncodedSeparator
                | Reason::Backslash
                | Reason::ControlCharacter
                | Reason::BadPercentEncoding
                | Reason::EmptySegment
                | Reason::NestedEncoding
                | Reason::TargetTooLong
                | Reason::RouteNotGranted
                | Reason::RequestsPerMinute
                | Reason::RequestsPerDay
                | Reason::MaxConcurrent
                | Reason::Throttled
                | Reason::LimitStoreUnavailable
                | Reason::BodyTooLarge
                | Reason::ValueLimitPerCall
                | Reason::ValueLimitDaily
                | Reason::ValueUnreadable
                | Reason::SignatureRequired
                | Reason::SignatureInvalid
                | Reason::UpstreamUnknown
                | Reason::IdentitySigningFailed
                | Reason::UpstreamUnavailable
                | Reason::UpstreamSaturated
                | Reason::UpstreamTimeout
                | Reason::UpstreamTls
                | Reason::UpstreamError
                | Reason::UpstreamBodyError
                | Reason::Incomplete
                | Reason::RenewalRateLimited
                | Reason::CsrTooLarge
                | Reason::BadBody
                | Reason::BadCsr
                | Reason::RenewalNotYetAllowed
                | Reason::NotRenewable
                | Reason::AlreadyRenewed
                | Reason::RenewalFailed
                | Reason::EnrolmentUnauthorized
                | Reason::InvitationExpired
                | Reason::InvitationUsed
                | Reason::InvitationLocked
                | Reason::EnrolmentRateLimited => place(*r),
            };
            assert!(listed < Reason::ALL.len(), "{r:?}");
        }
        let codes: HashSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len(), "a code is used twice");
        let variants: HashSet<Reason> = Reason::ALL.iter().copied().collect();
        assert_eq!(
            variants.len(),
            Reason::ALL.len(),
            "a variant is listed twice"
        );
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(*r));
            assert!(
                r.code()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r:?}"
            );
            if r.status().is_none() {
                assert!(r.closes_connection() || *r == Reason::Incomplete, "{r:?}");
            }
        }
    }

    #[test]
    fn the_pool_refusals_are_503_with_retry_after() {
        for r in [Reason::UpstreamUnavailable, Reason::UpstreamSaturated] {
            assert_eq!(r.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
            assert!(r.retry_after_secs().is_some());
            assert!(!r.closes_connection());
        }
        assert_eq!(
            Reason::UpstreamTimeout.status(),
            Some(StatusCode::GATEWAY_TIMEOUT)
        );
        assert_eq!(
            Reason::UpstreamError.status(),
            Some(StatusCode::BAD_GATEWAY)
        );
        assert_eq!(Reason::RequestsPerMinute.json_error(), "rate_limited");
        assert_eq!(Reason::RouteNotGranted.json_error(), "route_not_granted");
    }

    /// The rows of the README's reason table: `| `code` | status | ... |`.
    fn readme_table_codes() -> Vec<String> {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap_or_default();
        let mut in_table = false;
        let mut codes = Vec::new();
        for line in readme.lines() {
            if line.starts_with("| reason |") {
                in_table = true;
                continue;
            }
            if in_table {
                let Some(rest) = line.strip_prefix("| `") else {
                    if !line.starts_with("| ---") {
                        in_table = false;
                    }
                    continue;
                };
                if let Some(code) = rest.split('`').next() {
                    codes.push(code.to_string());
                }
            }
        }
        codes
    }

    #[test]
    fn the_readme_table_names_every_reason_and_no_other() {
        let table = readme_table_codes();
        let ours: Vec<String> = Reason::ALL.iter().map(|r| r.code().to_string()).collect();
        for code in &ours {
            assert!(table.contains(code), "README's reason table lacks `{code}`");
        }
        for code in &table {
            assert!(
                ours.contains(code),
                "README's reason table names `{code}`, no reason has it"
            );
        }
    }

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Production code's string literals that spell a reason code but name
    /// something else: certificate states (`cert list`, the inventory, the
    /// status view), limit settings read from the status JSON, the
    /// audit record of a partner's suspension, and an invitation's state.
    const SAME_WORD_OTHER_THING: &[(&str, &str)] = &[
        ("ca/inventory.rs", "expired"),
        ("ca/inventory.rs", "superseded"),
        ("cli/cert.rs", "expired"),
        ("cli/cert.rs", "revoked"),
        ("cli/cert.rs", "superseded"),
        ("guard/monitor/status.rs", "superseded"),
        ("cli/status.rs", "requests_per_minute"),
        ("cli/status.rs", "requests_per_day"),
        ("cli/status.rs", "max_concurrent"),
        ("gateway/live.rs", "partner_suspended"),
        ("enrolment/invitation.rs", "expired"),
    ];

    /// The file's code before its `#[cfg(test)]` module (tests spell the
    /// codes they expect on purpose: a code changed by mistake fails them).
    fn production_part(path: &Path, text: &str) -> Option<String> {
        let name = path.to_string_lossy();
        if name.contains("/tests/")
            || name.ends_with("/tests.rs")
            || name.ends_with("test_support.rs")
        {
            return None;
        }
        Some(match text.find("#[cfg(test)]") {
            Some(i) => text[..i].to_string(),
            None => text.to_string(),
        })
    }

    #[test]
    fn no_reason_code_is_written_outside_this_file() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 10, "no sources under {}", src.display());
        let mut found = Vec::new();
        for f in files {
            let rel = f
                .strip_prefix(&src)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            if rel == "reason.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let Some(code) = production_part(&f, &text) else {
                continue;
            };
            let spelled = Reason::ALL
                .iter()
                .map(|r| r.code())
                .chain(std::iter::once(Reason::RequestsPerMinute.json_error()));
            for c in spelled {
                if SAME_WORD_OTHER_THING.contains(&(rel.as_str(), c)) {
                    continue;
                }
                if code.contains(&format!("\"{c}\"")) {
                    found.push(format!("\"{c}\" in src/{rel}"));
                }
            }
        }
        assert!(
            found.is_empty(),
            "reason codes written as literals: {found:#?}"
        );
    }

    #[test]
    fn the_scan_sees_a_literal_code() {
        let text = format!(
            "let x = \"{}\";\n#[cfg(test)]\nmod tests {{}}",
            Reason::DotSegment.code()
        );
        let code = production_part(Path::new("src/x.rs"), &text).unwrap_or_default();
        assert!(code.contains(&format!("\"{}\"", Reason::DotSegment.code())));
        assert!(production_part(Path::new("src/a/tests/b.rs"), &text).is_none());
    }
}
