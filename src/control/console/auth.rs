//! The bearer token of a public admin listener. With `[server]
//! admin_public = true` (or an admin address that is not loopback), the
//! console's JSON and `/status` require `Authorization: Bearer <token>`,
//! the token being the content of `[server] admin_token_file`, read at each
//! request (so replacing the file rotates it) and compared in constant time.
//! Without a token file nothing is served there (fail closed). On loopback
//! no token is asked for: who can reach it can read `data/` anyway.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use crate::control::view::AdminView;

/// Longest token file read.
const MAX_TOKEN_BYTES: u64 = 4096;

/// `None` when `req` may read; else the 401 to answer.
pub async fn authorize<B>(
    req: &Request<B>,
    shared: &Arc<AdminView>,
) -> Option<Response<Full<Bytes>>> {
    // Whether the listener is public is how it was bound (at start); the
    // token file is the live setting.
    let bound = &shared.live.started().server;
    let public = bound.admin_public || !bound.admin.ip().is_loopback();
    if !public {
        return None;
    }
    let Some(file) = shared
        .live
        .snapshot()
        .gateway
        .server
        .admin_token_file
        .clone()
    else {
        return Some(unauthorized(
            "the admin listener is public and [server] admin_token_file is not set: the console, /status and the journal API are off",
        ));
    };
    let path = shared.live.home.resolve(&file);
    let expected = match read_token(&path).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("admin token file {}: {e}", path.display());
            return Some(unauthorized(
                "the admin token file cannot be read (see the broker's log)",
            ));
        }
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if tokens_match(p, &expected) => None,
        _ => Some(unauthorized("a bearer token is required")),
    }
}

/// Why the admin token file cannot be used.
#[derive(Debug, thiserror::Error)]
enum TokenFileError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error("the file is empty")]
    Empty,
}

async fn read_token(path: &std::path::Path) -> Result<String, TokenFileError> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path).await?;
    let mut text = String::new();
    f.take(MAX_TOKEN_BYTES).read_to_string(&mut text).await?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(TokenFileError::Empty);
    }
    Ok(token)
}

/// Constant time in the tokens' content: both are hashed first, so even
/// their lengths do not change the comparison's time.
fn tokens_match(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    aws_lc_rs::constant_time::verify_slices_are_equal(&a, &b).is_ok()
}

fn unauthorized(message: &str) -> Response<Full<Bytes>> {
    let mut r = super::error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
    );
    super::secured(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        assert!(tokens_match("s3cret-token", "s3cret-token"));
        assert!(!tokens_match("s3cret-token", "s3cret-tokem"));
        assert!(!tokens_match("s3cret", "s3cret-token"));
        assert!(!tokens_match("", "s3cret-token"));
    }
}
