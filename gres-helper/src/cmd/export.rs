//! `export`: the node's current GPU instances, in the schema `assert --layout` reads.

use anyhow::Result;

use super::{Global, Outcome};
use crate::mig_layout;

pub fn run(g: &Global) -> Result<Outcome> {
    let mut node = g.open_node()?;
    println!("{}", serde_json::to_string_pretty(&mig_layout::export(node.as_mut())?)?);
    Ok(Outcome::Done)
}
