//! Admission to `queue_required` sales. The waiting room issues admission tokens; until it
//! exists in this build, no token is valid, so a `queue_required` sale refuses every
//! reservation with `not_admitted` rather than letting buyers skip a queue that is not there.

use stampede_core::{SaleId, Timestamp};

use crate::auth::Principal;

/// Why an admission token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("no valid admission token")]
    NotAdmitted,
}

/// Checks and spends admission tokens.
#[derive(Debug, Default)]
pub struct Admissions {}

impl Admissions {
    /// Whether `token` admits `who` to `sale` at `now`.
    pub fn check(
        &self,
        _who: &Principal,
        _sale: &SaleId,
        _token: Option<&str>,
        _now: Timestamp,
    ) -> Result<(), AdmissionError> {
        Err(AdmissionError::NotAdmitted)
    }

    /// Marks a token as used by a successful reservation.
    pub fn spend(&self, _who: &Principal, _sale: &SaleId, _token: Option<&str>) {}
}
