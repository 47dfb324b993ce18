//! A broker's mirrors as the admin listener shows them: the totals of an
//! upstream's mirror in `/status`, polled (bounded) until they satisfy a
//! test, and the mirrored GETs that feed them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::client::{Conn, admin_get};

/// The mirror totals of `upstream` in `/status` (`match`, `mismatch`,
/// `error`, `dropped`), zeros before any.
pub async fn mirror_totals(admin: SocketAddr, upstream: &str) -> Value {
    let (_, body) = admin_get(admin, "/status").await;
    let s: Value = serde_json::from_str(&body).unwrap_or_default();
    s["mirrors"]["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["upstream"] == upstream)
        .map(|u| u["totals"].clone())
        .unwrap_or_else(|| serde_json::json!({"match": 0, "mismatch": 0, "error": 0, "dropped": 0}))
}

/// Waits (bounded: 10 s) until `f` holds for the totals of `upstream`;
/// returns the last totals read, whether `f` held or not.
pub async fn mirror_totals_until(
    admin: SocketAddr,
    upstream: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let mut t = Value::Null;
    for _ in 0..100 {
        t = mirror_totals(admin, upstream).await;
        if f(&t) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t
}

/// `n` GETs of `/v1/orders/{i}` on `c`; every one must answer 200.
pub async fn mirrored_gets(c: &mut Conn, n: usize) {
    for i in 0..n {
        let r = c.get(&format!("/v1/orders/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
}
