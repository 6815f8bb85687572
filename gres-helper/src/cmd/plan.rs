//! `plan`: the flexmig leaf layout of a recorded model, or of every GPU of the node.

use anyhow::{Context, Result};
use clap::Args;
use leaf_model::layout::{Layout, LeafRole};

use super::{Global, Outcome};
use crate::mig_layout;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A recorded GPU model (see `models`); without it, plan from what the node reports.
    #[arg(long)]
    pub model: Option<String>,
    /// Print JSON: {"model": ..., "instances": [{"profile", "start", "size"}, ...]}
    /// (with --model), or {"gpus": [{"gpu", "model", "instances"}, ...]} for the node.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, a: PlanArgs) -> Result<Outcome> {
    match a.model {
        Some(model) => {
            let m = leaf_model::mig::builtin_model(&model).with_context(|| {
                format!("{model:?} is not a recorded GPU model; use one of {}", leaf_model::mig::builtin_model_names().join(", "))
            })?;
            let l = leaf_model::layout::plan(&m)?;
            if a.json {
                println!("{}", serde_json::to_string(&l)?);
            } else {
                print_layout(None, &l);
            }
        }
        None => {
            let mut node = g.open_node()?;
            let l = mig_layout::plan_node(node.as_mut())?;
            if a.json {
                println!("{}", serde_json::to_string(&l)?);
            } else {
                for gl in l.gpus {
                    print_layout(Some(gl.gpu), &Layout { model: gl.model, instances: gl.instances });
                }
            }
        }
    }
    Ok(Outcome::Done)
}

fn print_layout(gpu: Option<u32>, l: &Layout) {
    let head = gpu.map_or_else(String::new, |g| format!("GPU {g}: "));
    println!("{head}{} -> {} leaves", l.model, l.instances.len());
    for i in &l.instances {
        let role = match l.role(i) {
            LeafRole::Double => "double",
            LeafRole::Small => "small",
        };
        println!("  {:<12} memory slices {}..{}  ({role})", i.profile, i.start, i.start + i.size - 1);
    }
}
