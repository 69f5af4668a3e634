//! Test peers shared by the unit tests of several modules.

pub mod dns;
