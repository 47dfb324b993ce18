//! The journal's library-level tests (real sled on temp dirs): the writer
//! (`writer`), the hash chain and checkpoints under tampering (`chain`),
//! refused-handshake aggregation (`flood`), the partner index's
//! unwritten tail (`index_tail`), pruning (`prune`), queries
//! (`query`), read-only opens (`read_only`) and the storage layout and its migration (`segments`). End-to-end journal tests, through the broker and the CLI,
//! are under `tests/e2e/`.

mod chain;
mod flood;
mod index_tail;
mod prune;
mod query;
mod read_only;
mod segments;
mod support;
mod writer;
