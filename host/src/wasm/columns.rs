//! What the packed call keeps between bursts.

use flowgate_policy::packed::Columns;

/// What the packed call keeps between bursts: the batch it encodes packets into (for
/// [`crate::Policy::judge`]), reused, and the module's last answer (a fresh `Vec` from the
/// bindings each call), which [`crate::policy::Verdicts`] borrows.
#[derive(Debug, Default)]
pub(super) struct Packed {
    pub(super) columns: Columns,
    pub(super) answer: Vec<u8>,
    /// Whether `answer` holds the checked verdicts of the last burst judged in columns.
    pub(super) checked: bool,
}
