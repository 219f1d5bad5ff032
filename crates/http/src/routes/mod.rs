//! One module per resource of the contract.

pub mod accounts;
pub mod admin;
pub mod cart;
pub mod catalog;
pub mod notifications;
pub mod ops;
pub mod orders;
pub mod pages;
pub mod queue;
pub mod sales;
pub mod users;
