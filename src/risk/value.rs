//! The value of a call: a route's `value = { amount, currency }` (JSON
//! pointers, RFC 6901) read out of the request body's raw JSON text. The
//! amount is taken from the number's (or string's) own digits, never
//! through a float; an object with a key twice is refused, so the broker
//! and the upstream cannot read two different amounts.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::amount::{Amount, AmountError};

/// Where a route's amount and currency are in the request body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSpec {
    /// JSON pointer to the amount (a number or a decimal string).
    pub amount: String,
    /// JSON pointer to the currency code (a string).
    pub currency: String,
}

/// The value a call carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallValue {
    pub amount: Amount,
    pub currency: String,
}

/// Why the value cannot be read (answered as 400 `value_unreadable`, the
/// `Display` in the body's `problem`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body has no {field} at `{pointer}`")]
    Missing {
        field: &'static str,
        pointer: String,
    },
    #[error("the amount at `{pointer}` is not a number or a decimal string")]
    AmountNotNumber { pointer: String },
    #[error("the amount: {0}")]
    BadAmount(#[from] AmountError),
    #[error("the currency at `{pointer}` is not a currency code (3 to 8 letters A-Z)")]
    BadCurrency { pointer: String },
    #[error("this partner has no value limit for currency {0}")]
    NoLimitFor(String),
}

impl Unreadable {
    /// A short machine-readable kind for the JSON body's `problem_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Unreadable::NotJson(_) => "not_json",
            Unreadable::Missing { .. } => "field_missing",
            Unreadable::AmountNotNumber { .. } | Unreadable::BadAmount(_) => "bad_amount",
            Unreadable::BadCurrency { .. } => "bad_currency",
            Unreadable::NoLimitFor(_) => "currency_without_limit",
        }
    }
}

/// Checks that `pointer` is a JSON pointer (`""` or `/a/b`).
pub fn pointer_problem(pointer: &str) -> Option<String> {
    if pointer.is_empty() || pointer.starts_with('/') {
        None
    } else {
        Some(format!(
            "`{pointer}` is not a JSON pointer (it starts with `/`, like \"/amount\")"
        ))
    }
}

/// Reads the value out of `body` (the whole request body).
pub fn read_value(body: &[u8], spec: &ValueSpec) -> Result<CallValue, Unreadable> {
    let text = std::str::from_utf8(body).map_err(|_| Unreadable::NotJson("not UTF-8".into()))?;
    let root: &RawValue =
        serde_json::from_str(text).map_err(|e| Unreadable::NotJson(e.to_string()))?;
    let amount = lookup(root, &spec.amount, "amount")?;
    let raw = amount.get().trim();
    let amount = if raw.starts_with('"') {
        let s: String =
            serde_json::from_str(raw).map_err(|e| Unreadable::NotJson(e.to_string()))?;
        Amount::parse(&s)?
    } else if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Amount::parse(raw)?
    } else {
        return Err(Unreadable::AmountNotNumber {
            pointer: spec.amount.clone(),
        });
    };
    let currency = lookup(root, &spec.currency, "currency")?;
    let bad_currency = || Unreadable::BadCurrency {
        pointer: spec.currency.clone(),
    };
    let currency: String = serde_json::from_str(currency.get()).map_err(|_| bad_currency())?;
    if !(3..=8).contains(&currency.len()) || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad_currency());
    }
    Ok(CallValue { amount, currency })
}

/// The raw value at `pointer` under `root`.
fn lookup<'a>(
    root: &'a RawValue,
    pointer: &str,
    field: &'static str,
) -> Result<&'a RawValue, Unreadable> {
    let missing = || Unreadable::Missing {
        field,
        pointer: pointer.to_string(),
    };
    let mut at = root;
    if pointer.is_empty() {
        return Ok(at);
    }
    for token in pointer.split('/').skip(1) {
        let key = token.replace("~1", "/").replace("~0", "~");
        let raw = at.get().trim_start();
        at = if raw.starts_with('{') {
            let UniqueObject(entries) =
                serde_json::from_str(raw).map_err(|e| Unreadable::NotJson(e.to_string()))?;
            let mut found = entries.into_iter().filter(|(k, _)| *k == key);
            let first = found.next().ok_or_else(missing)?;
            first.1
        } else if raw.starts_with('[') {
            let items: Vec<&RawValue> =
                serde_json::from_str(raw).map_err(|e| Unreadable::NotJson(e.to_string()))?;
            let index: usize = if key == "0" || (!key.starts_with('0') && !key.is_empty()) {
                key.parse().map_err(|_| missing())?
            } else {
                return Err(missing());
            };
            *items.get(index).ok_or_else(missing)?
        } else {
            return Err(missing());
        };
    }
    Ok(at)
}

/// An object's entries, refused when a key appears twice.
struct UniqueObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for UniqueObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = UniqueObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut entries: Vec<(String, &'a RawValue)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "the key `{}` appears twice in one object",
                            crate::event::truncated(&k, 40)
                        )));
                    }
                    entries.push((k, v));
                }
                Ok(UniqueObject(entries))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ValueSpec {
        ValueSpec {
            amount: "/amount".into(),
            currency: "/currency".into(),
        }
    }

    #[test]
    fn reads_numbers_and_strings_exactly() {
        let v = read_value(br#"{"amount": 1234.56, "currency": "EUR"}"#, &spec()).unwrap();
        assert_eq!(v.amount.units(), 12_345_600);
        assert_eq!(v.currency, "EUR");
        let v = read_value(br#"{"currency":"USD","amount":"0.10"}"#, &spec()).unwrap();
        assert_eq!(v.amount.units(), 1_000);
        let nested = ValueSpec {
            amount: "/tx/0/a~1b".into(),
            currency: "/tx/0/c".into(),
        };
        let v = read_value(
            br#"{"tx":[{"a/b": 9007199254740993, "c": "JPY"}]}"#,
            &nested,
        );
        // 9007199254740993 is not a double: too large for the amounts kept, refused, not rounded.
        assert!(matches!(
            v,
            Err(Unreadable::BadAmount(AmountError::TooLarge(_)))
        ));
        let v = read_value(
            br#"{"tx":[{"a/b": 90071992547.4993, "c": "JPY"}]}"#,
            &nested,
        )
        .unwrap();
        assert_eq!(v.amount.units(), 900_719_925_474_993);
    }

    #[test]
    fn says_which_part_is_unreadable() {
        let kind = |body: &[u8]| read_value(body, &spec()).unwrap_err().kind();
        assert_eq!(kind(b"amount=5"), "not_json");
        assert_eq!(kind(b"\xff"), "not_json");
        assert_eq!(kind(br#"{"amount": 5}"#), "field_missing");
        assert_eq!(kind(br#"{"currency": "EUR"}"#), "field_missing");
        assert_eq!(kind(br#"[5, "EUR"]"#), "field_missing");
        assert_eq!(
            kind(br#"{"amount": true, "currency": "EUR"}"#),
            "bad_amount"
        );
        assert_eq!(
            kind(br#"{"amount": "5,00", "currency": "EUR"}"#),
            "bad_amount"
        );
        assert_eq!(kind(br#"{"amount": -5, "currency": "EUR"}"#), "bad_amount");
        assert_eq!(kind(br#"{"amount": 5, "currency": "eur"}"#), "bad_currency");
        assert_eq!(kind(br#"{"amount": 5, "currency": 978}"#), "bad_currency");
        assert_eq!(
            kind(br#"{"amount": 5, "amount": 50000, "currency": "EUR"}"#),
            "not_json"
        );
    }
}
