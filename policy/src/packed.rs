//! The packed format of `judge-packed` (its byte layout is documented in `wit/policy.wit`):
//! one codec shared by the guest, which decodes packets and encodes verdicts, and the host,
//! which does the reverse.
//!
//! - The batch layout ([`Batch`], [`Columns`], [`encode_packets`]): the packets as columns
//!   of little-endian words, IPv4 addresses as numbers, IPv6 ones in a list after the
//!   columns. A dataplane's decoder writes a burst into [`Columns`] in place.
//! - The verdict word ([`encode_verdict`], [`decode_verdict`], [`WordDecoder`]): one verdict
//!   in four bytes, kind in the top two bits; the table's matrices store their verdicts in
//!   this form.
//! - [`judge_packed`]: a batch in, its verdict records out. It lives beside
//!   [`Table::lookup_batch`](crate::Table::lookup_batch), whose lanes it fills straight from
//!   the batch's columns.

pub use crate::batch::{Batch, Columns, ColumnsError, encode_packets};
pub use crate::table::lookup::judge_packed;
pub use crate::word::{VERDICT_BYTES, WordDecoder, decode_verdict, encode_verdict};
