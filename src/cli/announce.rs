//! Which CLI commands the fleet must hear of: the change a successful
//! command made (partner, certificate or CA), published after the files
//! are written so other nodes reload at once.

use super::Command;
use super::ca::CaCmd;
use super::cert::CertCmd;
use super::partner::PartnerCmd;
use crate::fleet::announce::{Change, ChangeKind};

/// The change a successful CLI command makes, if the fleet must hear of it.
pub fn of_command(cmd: &Command) -> Option<Change> {
    let p = |kind, id: &str| Some(Change::partner(kind, id));
    match cmd {
        Command::Partner(c) => match c {
            PartnerCmd::Add { id, .. } | PartnerCmd::Resume { id } => {
                p(ChangeKind::PartnerChanged, id)
            }
            PartnerCmd::Suspend { id } => p(ChangeKind::Suspended, id),
            PartnerCmd::Remove { id } => p(ChangeKind::Removed, id),
            _ => None,
        },
        Command::Cert(c) => match c {
            CertCmd::Issue { id, .. } | CertCmd::Renew { id, .. } => {
                p(ChangeKind::PartnerChanged, id)
            }
            CertCmd::Revoke {
                serial, partner, ..
            } => Some(Change {
                kind: ChangeKind::Revoked,
                partner: partner.clone(),
                serials: serial.iter().cloned().collect(),
            }),
            CertCmd::List { .. } => None,
            _ => Some(Change {
                kind: ChangeKind::Config,
                partner: None,
                serials: Vec::new(),
            }),
        },
        Command::Ca(CaCmd::List { .. }) => None,
        Command::Ca(_) => Some(Change {
            kind: ChangeKind::Config,
            partner: None,
            serials: Vec::new(),
        }),
        _ => None,
    }
}
