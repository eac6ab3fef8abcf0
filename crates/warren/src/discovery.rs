//! Discovery hooks: ways a node learns where its peers are.

pub mod manual;
