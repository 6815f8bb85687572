//! `models`: the recorded GPU models.

use anyhow::Result;

use super::Outcome;

pub fn run() -> Result<Outcome> {
    for m in leaf_model::mig::builtin_models() {
        println!("{:<10} {} compute / {} memory slices  ({})", m.name, m.compute_slices, m.memory_slices, m.nvml_names.join(", "));
    }
    Ok(Outcome::Done)
}
