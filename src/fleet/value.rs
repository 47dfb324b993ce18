//! Fleet-wide value totals: a partner's running total per currency and
//! UTC day, kept in the store (so it survives a node's restart and every
//! node adds to the same one), reserved by one atomic Lua script and given
//! back with `DECRBY`. Amounts are integers in units of 0.0001, at most
//! 2^53 - 1, so the script's arithmetic (Lua numbers are doubles) is exact.

use redis::aio::ConnectionManager;

use crate::risk::Amount;

/// KEYS[1]: the day's total. ARGV: the amount, the day limit (-1: none),
/// the key's time to live (ms). Returns {1, new total} when reserved, or
/// {0, total} when the amount would take the total past the limit.
const RESERVE: &str = r#"
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
if limit >= 0 and total + amount > limit then
  return {0, total}
end
local new = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, new}
"#;

/// How long a day's total is kept after the day ends (for status reads
/// around midnight): one more day.
const KEEP_AFTER_DAY_MS: i64 = 86_400_000;

/// The reservation script.
pub struct ValueTotals {
    script: redis::Script,
}

impl Default for ValueTotals {
    fn default() -> ValueTotals {
        ValueTotals {
            script: redis::Script::new(RESERVE),
        }
    }
}

/// The script's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// Reserved; the day's total with this call.
    Yes(Amount),
    /// Over the limit; the day's total before this call.
    Over(Amount),
}

impl ValueTotals {
    /// Reserves `amount` in `key` unless that takes it past `per_day`.
    pub async fn reserve(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
        amount: Amount,
        per_day: Option<Amount>,
        to_midnight_ms: i64,
    ) -> redis::RedisResult<Reserved> {
        let reply: Vec<i64> = self
            .script
            .key(key)
            .arg(amount.units())
            .arg(per_day.map(|a| a.units()).unwrap_or(-1))
            .arg(to_midnight_ms + KEEP_AFTER_DAY_MS)
            .invoke_async(conn)
            .await?;
        Ok(match reply.as_slice() {
            [0, total] => Reserved::Over(Amount::from_units(*total).unwrap_or(Amount::ZERO)),
            [_, total] => Reserved::Yes(Amount::from_units(*total).unwrap_or(Amount::ZERO)),
            _ => Reserved::Yes(amount),
        })
    }
}

/// Gives `amount` back to `key` (never below zero); the total left.
pub async fn give_back(
    conn: &mut ConnectionManager,
    key: &str,
    amount: Amount,
) -> redis::RedisResult<Amount> {
    let left: i64 = redis::cmd("DECRBY")
        .arg(key)
        .arg(amount.units())
        .query_async(conn)
        .await?;
    if left < 0 {
        // Only after a store that lost the key (a restart without
        // persistence): start from zero rather than below it.
        let _: i64 = redis::cmd("INCRBY")
            .arg(key)
            .arg(-left)
            .query_async(conn)
            .await?;
    }
    Ok(Amount::from_units(left).unwrap_or(Amount::ZERO))
}

/// Today's total in `key`.
pub async fn total(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<Amount> {
    let v: Option<i64> = redis::cmd("GET").arg(key).query_async(conn).await?;
    Ok(v.and_then(Amount::from_units).unwrap_or(Amount::ZERO))
}
