//! The partner-facing gateway: each connection's life (`conn`) and each
//! request's phases (`request`), the one `Refusal` type every refusal
//! travels as (`refusal`), the place that turns an outcome into the
//! partner's response and its record (`respond`), the live configuration the
//! phases read (`live`), the upstream leg (`relay`), the record-keeping body
//! (`exchange`) and the self-service renewal endpoint (`renewal`).

pub mod exchange;
pub mod live;
pub mod relay;
pub mod renewal;
