//! Enrolment without mailing keys: one-time invitations (`invitation`) a
//! partner redeems over EST (RFC 7030) for its first certificate, and the
//! PKCS#7 certs-only answers EST speaks (`pkcs7`). The HTTP side (paths,
//! credentials, rate, records) is `gateway::est`; signing is
//! `ca::lifecycle`; the partner's side is `agent::enrol`.

pub mod invitation;
pub mod pkcs7;

pub use invitation::{Invitation, InvitationError, Redeemed};
