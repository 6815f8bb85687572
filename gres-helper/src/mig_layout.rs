//! `plan`, `apply`, `assert`, `export`: the node's MIG leaf layout against the planned one.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use leaf_model::layout::{plan, Layout, LeafPlacement};
use serde::{Deserialize, Serialize};

use crate::node::{GpuInfo, GpuInstance, MigModeChange, Node};

/// A node's layout, GPU by GPU: what `export` prints and `assert --layout` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLayout {
    pub gpus: Vec<GpuLayout>,
}

/// One GPU's layout: the `plan --json` schema plus the GPU index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuLayout {
    pub gpu: u32,
    pub model: String,
    pub instances: Vec<LeafPlacement>,
}

impl GpuLayout {
    fn from_layout(gpu: u32, l: Layout) -> Self {
        GpuLayout { gpu, model: l.model, instances: l.instances }
    }
}

/// Reads a layout file: either a node layout (`export` output) or one GPU's layout
/// (`plan --model M --json` output), which then applies to every GPU of the node.
///
/// # Errors
/// Unreadable or malformed file.
pub fn read_layout_file(path: &Path, gpus: &[GpuInfo]) -> Result<NodeLayout> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the layout file {}", path.display()))?;
    if let Ok(n) = serde_json::from_str::<NodeLayout>(&text) {
        return Ok(n);
    }
    match serde_json::from_str::<Layout>(&text) {
        Ok(l) => Ok(NodeLayout { gpus: gpus.iter().map(|g| GpuLayout::from_layout(g.index, l.clone())).collect() }),
        Err(e) => bail!(
            "the layout file {} is neither `export` output ({{\"gpus\": [...]}}) nor `plan --json` output ({{\"model\": ..., \"instances\": [...]}}): {e}",
            path.display()
        ),
    }
}

/// The layout `apply` and `assert` aim at: the file at `layout` (see [`read_layout_file`]),
/// else the plan.
///
/// # Errors
/// An unreadable or malformed file, a GPU without a flexmig layout, node failures.
pub fn wanted(node: &mut dyn Node, layout: Option<&Path>) -> Result<NodeLayout> {
    match layout {
        Some(p) => {
            let gpus = node.gpus()?;
            read_layout_file(p, &gpus)
        }
        None => plan_node(node),
    }
}

/// The planned layout of every GPU of the node, from the geometry the node reports.
///
/// # Errors
/// A GPU without a flexmig layout (the message says which and why), or node failures.
pub fn plan_node(node: &mut dyn Node) -> Result<NodeLayout> {
    let gpus = node.gpus()?;
    if gpus.is_empty() {
        bail!("the node has no GPUs");
    }
    let mut out = Vec::new();
    for g in &gpus {
        let l = plan(&g.model).map_err(|e| anyhow!("GPU {} ({}): {e}", g.index, g.name))?;
        out.push(GpuLayout::from_layout(g.index, l));
    }
    Ok(NodeLayout { gpus: out })
}

/// The node's current GPU instances in the layout schema.
///
/// # Errors
/// Node failures.
pub fn export(node: &mut dyn Node) -> Result<NodeLayout> {
    let gpus = node.gpus()?;
    let mut out = Vec::new();
    for g in &gpus {
        let mut instances: Vec<LeafPlacement> = node.instances(g.index)?.iter().map(GpuInstance::placement).collect();
        instances.sort_by_key(|i| i.start);
        out.push(GpuLayout { gpu: g.index, model: g.model.name.clone(), instances });
    }
    Ok(NodeLayout { gpus: out })
}

/// What must change on one GPU to reach its desired layout.
#[derive(Debug, Default)]
struct GpuChanges {
    enable_mig: bool,
    destroy: Vec<GpuInstance>,
    create: Vec<LeafPlacement>,
    messages: Vec<String>,
}

impl GpuChanges {
    fn is_empty(&self) -> bool {
        !self.enable_mig && self.destroy.is_empty() && self.create.is_empty()
    }
}

fn changes_for(g: &GpuInfo, current: &[GpuInstance], want: &GpuLayout) -> Result<GpuChanges> {
    let i = g.index;
    if !want.model.eq_ignore_ascii_case(&g.model.name) {
        bail!("GPU {i}: the layout is for model {}, but the GPU is a {} ({}); plan for this GPU instead", want.model, g.model.name, g.name);
    }
    let mut c = GpuChanges::default();
    if !g.mig.current {
        c.enable_mig = true;
        c.messages.push(if g.mig.pending {
            format!("GPU {i}: MIG mode is pending enable but not in effect (needs a GPU reset)")
        } else {
            format!("GPU {i}: MIG mode is disabled")
        });
    }
    for inst in current {
        let p = inst.placement();
        if !want.instances.contains(&p) {
            c.messages
                .push(format!("GPU {i}: unexpected GPU instance {} at memory slice {} (GPU instance id {})", p.profile, p.start, inst.id));
            c.destroy.push(inst.clone());
        } else if inst.leaf_ci().is_none() {
            c.messages.push(format!(
                "GPU {i}: GPU instance {} at memory slice {} (id {}) has {} compute instance(s); a leaf has exactly one spanning the whole GPU instance",
                p.profile,
                p.start,
                inst.id,
                inst.compute.len()
            ));
            c.destroy.push(inst.clone());
            c.create.push(p);
        }
    }
    for w in &want.instances {
        if !current.iter().any(|inst| &inst.placement() == w) {
            c.messages.push(format!("GPU {i}: missing {} at memory slice {}", w.profile, w.start));
            c.create.push(w.clone());
        }
    }
    c.create.sort_by_key(|p| p.start);
    Ok(c)
}

/// The differences between the node and `want` (empty when they agree).
///
/// # Errors
/// Node failures, or a layout for a GPU the node lacks.
pub fn differences(node: &mut dyn Node, want: &NodeLayout) -> Result<Vec<String>> {
    let gpus = node.gpus()?;
    let mut out = Vec::new();
    for w in &want.gpus {
        let Some(g) = gpus.iter().find(|g| g.index == w.gpu) else {
            out.push(format!("GPU {}: in the layout but not on the node", w.gpu));
            continue;
        };
        let current = node.instances(g.index)?;
        out.extend(changes_for(g, &current, w)?.messages);
    }
    Ok(out)
}

/// Writes one line of apply's report. A reader that went away (`apply | head -1`, a dropped
/// ssh session) must not stop a change halfway, so write errors are ignored.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        let _ = writeln!($out, $($arg)*);
    };
}

/// Makes the node match `want`: enables MIG mode where needed, destroys the GPU instances
/// that differ and creates the missing leaves; GPUs already right are not touched. Refuses,
/// before changing anything, when a GPU to change has running processes or its processes
/// cannot be listed, unless `force`. Once changing, nothing stops it halfway: SIGPIPE, SIGHUP,
/// SIGINT and SIGTERM are held until the change is done (then named in the report), and
/// failures to write the report are ignored.
///
/// # Errors
/// Processes on a GPU to change or a failed process query, a GPU needing a reset, node failures.
pub fn apply(node: &mut dyn Node, want: &NodeLayout, force: bool, out: &mut dyn Write) -> Result<()> {
    let gpus = node.gpus()?;
    let mut plan_per_gpu = Vec::new();
    for w in &want.gpus {
        let g =
            gpus.iter().find(|g| g.index == w.gpu).ok_or_else(|| anyhow!("GPU {} is in the layout but not on the node", w.gpu))?.clone();
        if g.model.profiles.is_empty() {
            bail!("GPU {} ({}) does not support MIG; leave it out of the layout", g.index, g.name);
        }
        let current = node.instances(g.index)?;
        let c = changes_for(&g, &current, w)?;
        plan_per_gpu.push((g, c));
    }
    // Refuse before touching anything. A process list that cannot be read is no proof that
    // the GPU is idle.
    let (mut busy, mut unknown) = (Vec::new(), Vec::new());
    for (g, c) in &plan_per_gpu {
        if c.is_empty() {
            continue;
        }
        match node.processes(g.index) {
            Ok(procs) if procs.is_empty() => {}
            Ok(procs) => {
                let list = procs.iter().map(|p| format!("{} ({})", p.pid, p.name)).collect::<Vec<_>>().join(", ");
                busy.push(format!("GPU {} ({}) has running processes: {list}", g.index, g.uuid));
            }
            Err(e) => unknown.push(format!("GPU {} ({}): its processes cannot be listed ({e:#})", g.index, g.uuid)),
        }
    }
    let doubtful = !busy.is_empty() || !unknown.is_empty();
    if doubtful && !force {
        let mut advice = Vec::new();
        if !busy.is_empty() {
            advice.push("stop the processes (drain the node in Slurm first)");
        }
        if !unknown.is_empty() {
            advice.push("make the process query work (run as root; `nvidia-smi` shows whether the driver answers)");
        }
        bail!(
            "{}; nothing was changed: {} and run apply again, or pass --force to change the GPUs anyway",
            busy.iter().chain(&unknown).cloned().collect::<Vec<_>>().join("; "),
            advice.join(" and ")
        );
    }
    for line in busy.iter().chain(&unknown) {
        say!(out, "warning: {line}; changing it anyway (--force)");
    }
    let held = crate::signals::Held::new();
    let mut needs_reset = Vec::new();
    for (g, c) in &plan_per_gpu {
        let i = g.index;
        if c.is_empty() {
            say!(out, "GPU {i}: already as planned, not touched");
            continue;
        }
        if c.enable_mig {
            match node.set_mig_mode(i, true).with_context(|| format!("enabling MIG mode on GPU {i}"))? {
                MigModeChange::Done => {
                    say!(out, "GPU {i}: MIG mode enabled");
                }
                MigModeChange::NeedsReset => {
                    needs_reset.push(i);
                    continue;
                }
            }
        }
        for d in &c.destroy {
            node.destroy_instance(i, d.id).with_context(|| format!("destroying GPU instance {} on GPU {i}", d.id))?;
            say!(out, "GPU {i}: destroyed {} at memory slice {} (GPU instance id {})", d.profile, d.start, d.id);
        }
        for p in &c.create {
            let profile = g.model.profile(&p.profile).ok_or_else(|| anyhow!("GPU {i} ({}) has no profile {}", g.name, p.profile))?;
            let made = node
                .create_leaf(i, profile, p.start)
                .with_context(|| format!("creating {} at memory slice {} on GPU {i}", p.profile, p.start))?;
            let uuid = made.leaf_ci().map_or("?", |ci| ci.uuid.as_str()).to_string();
            say!(out, "GPU {i}: created {} at memory slice {} (GPU instance id {}, {uuid})", p.profile, p.start, made.id);
        }
    }
    node.commit()?;
    let _ = out.flush();
    for sig in held.release() {
        let line = format!("apply: {sig} arrived while the GPUs were being changed; the change was finished first");
        say!(out, "{line}");
        let _ = writeln!(std::io::stderr(), "flexmig-gres-helper: {line}");
    }
    if !needs_reset.is_empty() {
        let list = needs_reset.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        bail!(
            "MIG mode on GPU {list} is pending and needs a GPU reset to take effect: with the GPU idle run `nvidia-smi -i {list} -r` (or reboot the node), then run apply again"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeInstance, FakeProcess, MemoryNode};
    use leaf_model::mig::builtin_model_names;

    fn fake(model: &str, gpus: u32, mig: bool) -> MemoryNode {
        MemoryNode::create(model, gpus, mig).unwrap()
    }

    #[test]
    fn apply_export_assert_round_trip_on_every_recorded_model() {
        for model in builtin_model_names() {
            let mut node = fake(&model, 2, false);
            let want = plan_node(&mut node).unwrap();
            assert_eq!(want.gpus.len(), 2);
            assert!(!differences(&mut node, &want).unwrap().is_empty());
            let mut log = Vec::new();
            apply(&mut node, &want, false, &mut log).unwrap();
            assert_eq!(differences(&mut node, &want).unwrap(), Vec::<String>::new(), "{model}");
            let exported = export(&mut node).unwrap();
            assert_eq!(exported, want, "{model}");
            let json = serde_json::to_string(&exported).unwrap();
            let back: NodeLayout = serde_json::from_str(&json).unwrap();
            assert_eq!(differences(&mut node, &back).unwrap(), Vec::<String>::new());
            for g in 0..2 {
                let insts = node.instances(g).unwrap();
                assert!(insts.iter().all(|i| i.leaf_ci().is_some()));
            }
            // A second apply changes nothing.
            let mut log = Vec::new();
            apply(&mut node, &want, false, &mut log).unwrap();
            let log = String::from_utf8(log).unwrap();
            assert_eq!(log.matches("already as planned").count(), 2, "{log}");
        }
    }

    #[test]
    fn apply_changes_only_what_differs() {
        let mut node = fake("A100-40GB", 2, true);
        let want = plan_node(&mut node).unwrap();
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        // Break GPU 1: drop the two smalls at slices 0 and 1 and put a 2g.10gb over them.
        let ids_before: Vec<u32> = node.file().gpus[0].instances.iter().map(|i| i.id).collect();
        node.edit(|f| {
            f.gpus[1].instances.retain(|i| i.start != 0 && i.start != 1);
            f.gpus[1].instances.push(FakeInstance { id: 40, profile: "2g.10gb".into(), start: 0, compute: vec![] });
        })
        .unwrap();
        let diffs = differences(&mut node, &want).unwrap();
        assert_eq!(diffs.len(), 3, "{diffs:?}");
        assert!(diffs[0].contains("unexpected GPU instance 2g.10gb at memory slice 0"), "{diffs:?}");
        let mut log = Vec::new();
        apply(&mut node, &want, false, &mut log).unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("GPU 0: already as planned"), "{log}");
        assert_eq!(log.matches("created").count(), 2, "{log}");
        assert_eq!(node.file().gpus[0].instances.iter().map(|i| i.id).collect::<Vec<_>>(), ids_before);
        assert!(differences(&mut node, &want).unwrap().is_empty());
    }

    #[test]
    fn apply_refuses_a_gpu_with_processes_unless_forced() {
        let mut node = fake("H100-80GB", 2, true);
        node.edit(|f| f.gpus[1].processes.push(FakeProcess { pid: 4242, name: "python".into() })).unwrap();
        let before = node.file().clone();
        let want = plan_node(&mut node).unwrap();
        let e = format!("{:#}", apply(&mut node, &want, false, &mut Vec::new()).unwrap_err());
        assert!(e.contains("GPU 1") && e.contains("4242 (python)") && e.contains("nothing was changed"), "{e}");
        assert_eq!(node.file(), &before, "refused apply must not change the node");
        let mut log = Vec::new();
        apply(&mut node, &want, true, &mut log).unwrap();
        assert!(String::from_utf8(log).unwrap().contains("--force"));
        assert!(differences(&mut node, &want).unwrap().is_empty());
    }

    #[test]
    fn apply_refuses_a_gpu_whose_processes_cannot_be_listed_unless_forced() {
        let mut node = fake("A100-80GB", 2, true);
        node.edit(|f| f.gpus[1].process_query_error = Some("Insufficient Permissions".into())).unwrap();
        let before = node.file().clone();
        let want = plan_node(&mut node).unwrap();
        let e = format!("{:#}", apply(&mut node, &want, false, &mut Vec::new()).unwrap_err());
        assert!(e.contains("GPU 1") && e.contains("cannot be listed") && e.contains("Insufficient Permissions"), "{e}");
        assert!(e.contains("nothing was changed") && e.contains("--force") && !e.contains("GPU 0"), "{e}");
        assert_eq!(node.file(), &before, "refused apply must not change the node");
        let mut log = Vec::new();
        apply(&mut node, &want, true, &mut log).unwrap();
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("warning: GPU 1") && log.contains("cannot be listed") && log.contains("--force"), "{log}");
        assert!(differences(&mut node, &want).unwrap().is_empty());
        // Once the GPU is as planned, a failing query does not matter: apply changes nothing.
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
    }

    /// A report writer whose reader has gone (`apply | head -1`).
    struct ClosedPipe;
    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_report_nobody_reads_does_not_stop_the_change() {
        let mut node = fake("H100-80GB", 2, false);
        let want = plan_node(&mut node).unwrap();
        apply(&mut node, &want, false, &mut ClosedPipe).unwrap();
        assert_eq!(differences(&mut node, &want).unwrap(), Vec::<String>::new());
    }

    /// A node on which `sig` arrives (Ctrl-C, a dropped ssh session, kill) while the n-th leaf
    /// is being created.
    #[derive(Debug)]
    struct Interrupted {
        inner: MemoryNode,
        sig: libc::c_int,
        at: usize,
        created: usize,
    }

    impl Node for Interrupted {
        fn gpus(&mut self) -> Result<Vec<GpuInfo>> {
            self.inner.gpus()
        }
        fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>> {
            self.inner.instances(gpu)
        }
        fn processes(&mut self, gpu: u32) -> Result<Vec<crate::node::GpuProcess>> {
            self.inner.processes(gpu)
        }
        fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigModeChange> {
            self.inner.set_mig_mode(gpu, enabled)
        }
        fn destroy_instance(&mut self, gpu: u32, gi: u32) -> Result<()> {
            self.inner.destroy_instance(gpu, gi)
        }
        fn create_leaf(&mut self, gpu: u32, profile: &leaf_model::mig::GiProfile, start: u32) -> Result<GpuInstance> {
            self.created += 1;
            if self.created == self.at {
                // SAFETY: raise sends a signal to this thread; nothing else is involved.
                assert_eq!(unsafe { libc::raise(self.sig) }, 0);
            }
            self.inner.create_leaf(gpu, profile, start)
        }
        fn commit(&mut self) -> Result<()> {
            self.inner.commit()
        }
    }

    #[test]
    fn signals_mid_change_wait_until_the_change_is_done() {
        // Without the hold, each of these would end the test process halfway.
        for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGHUP, "SIGHUP"), (libc::SIGTERM, "SIGTERM")] {
            let mut node = Interrupted { inner: fake("A100-40GB", 2, true), sig, at: 3, created: 0 };
            let want = plan_node(&mut node).unwrap();
            let mut log = Vec::new();
            apply(&mut node, &want, false, &mut log).unwrap();
            let log = String::from_utf8(log).unwrap();
            assert_eq!(log.matches("created").count(), 14, "{log}");
            assert!(
                log.contains(&format!("apply: {name} arrived while the GPUs were being changed; the change was finished first")),
                "{log}"
            );
            assert_eq!(differences(&mut node.inner, &want).unwrap(), Vec::<String>::new(), "{name}");
        }
    }

    #[test]
    fn processes_on_a_gpu_already_right_do_not_block() {
        let mut node = fake("H200", 1, true);
        let want = plan_node(&mut node).unwrap();
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        node.edit(|f| f.gpus[0].processes.push(FakeProcess { pid: 1, name: "train".into() })).unwrap();
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
    }

    #[test]
    fn a_gpu_needing_a_reset_says_so() {
        let mut node = fake("A100-80GB", 1, false);
        node.edit(|f| f.gpus[0].enable_needs_reset = true).unwrap();
        let want = plan_node(&mut node).unwrap();
        let e = format!("{:#}", apply(&mut node, &want, false, &mut Vec::new()).unwrap_err());
        assert!(e.contains("needs a GPU reset") && e.contains("nvidia-smi -i 0 -r"), "{e}");
        let d = differences(&mut node, &want).unwrap();
        assert!(d[0].contains("pending enable"), "{d:?}");
    }

    #[test]
    fn non_leaf_instances_are_reported_and_rebuilt() {
        let mut node = fake("H100-94GB", 1, true);
        let want = plan_node(&mut node).unwrap();
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        node.edit(|f| f.gpus[0].instances[2].compute.clear()).unwrap();
        let d = differences(&mut node, &want).unwrap();
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("0 compute instance"), "{d:?}");
        apply(&mut node, &want, false, &mut Vec::new()).unwrap();
        assert!(differences(&mut node, &want).unwrap().is_empty());
    }

    #[test]
    fn layout_files_of_both_shapes_are_read() {
        let d = tempfile::tempdir().unwrap();
        let mut node = fake("A30", 2, true);
        let gpus = node.gpus().unwrap();
        let single = d.path().join("plan.json");
        std::fs::write(&single, serde_json::to_string(&plan(&gpus[0].model).unwrap()).unwrap()).unwrap();
        let l = read_layout_file(&single, &gpus).unwrap();
        assert_eq!(l.gpus.len(), 2);
        assert_eq!(l.gpus[1].instances.len(), 4);
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, r#"{"model": "A30", "instances": [], "extra": 1}"#).unwrap();
        assert!(format!("{:#}", read_layout_file(&bad, &gpus).unwrap_err()).contains("neither"));
        // A layout for another model is refused clearly.
        let other = d.path().join("other.json");
        std::fs::write(&other, serde_json::to_string(&plan(&leaf_model::mig::builtin_model("H200").unwrap()).unwrap()).unwrap()).unwrap();
        let l = read_layout_file(&other, &gpus).unwrap();
        let e = format!("{:#}", differences(&mut node, &l).unwrap_err());
        assert!(e.contains("the layout is for model H200"), "{e}");
    }
}
