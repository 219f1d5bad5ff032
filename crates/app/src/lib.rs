//! Stampede's use cases (reserve, checkout, sweep, reconcile, …) over the ports they need.

pub mod ports;
