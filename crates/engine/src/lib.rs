//! The embedded adapters that need no server: the in-process stock gate ([`MemoryGate`]), the
//! waiting room ([`MemoryRoom`]) and the in-process event bus ([`LocalBus`]). With the SQLite store they make `stampede serve` work on
//! a machine with nothing installed.

mod bus;
mod gate;
mod room;

pub use bus::LocalBus;
pub use gate::MemoryGate;
pub use room::MemoryRoom;
