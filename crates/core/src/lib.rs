//! Stampede's pure domain: what a sale, a hold, an order and a payment are, how each may change,
//! and the invariants that must hold at every instant. No I/O and no async runtime: time comes
//! from a [`Clock`] passed in, so every rule here runs the same in a test, a simulation or prod.
//!
//! The invariants (DESIGN.md):
//! 1. `available + held + sold == total_stock`, each term `>= 0` — see [`StockLevels::check`].
//! 2. per buyer `held + sold <= per_user_limit` — see [`judge::judge_reserve`].
//! 4. every hold ends exactly once — see [`HoldState`] transitions.
//!
//! Every money rule (checkout, payment, cancellation, refund) is a plan in [`checkout`].
//! 5. admission is first come, first served by place in line — see [`waiting_line`]; what a
//!    lottery decides can be recomputed by anyone — see [`draw`].

pub mod admission;
pub mod catalog;
pub mod checkout;
pub mod clock;
pub mod draw;
pub mod ids;
pub mod judge;
pub mod money;
pub mod order;
pub mod pow;
pub mod queue_analytics;
pub mod sale;
pub mod session;
pub mod stock;
pub mod waiting_line;

pub use catalog::{name_matches, search_words, DropEvent, Product, ProductStatus};
pub use clock::{Clock, ManualClock, Timestamp};
pub use ids::{DropId, HoldId, OrderId, PaymentId, ProductId, SaleId, UserId};
pub use money::{Currency, Money, MoneyError};
pub use order::{Hold, HoldState, Order, OrderItem, OrderStatus, Payment, PaymentStatus};
pub use sale::{Sale, SaleControl, SaleStatus};
pub use stock::{InvariantViolation, StockLevels};
