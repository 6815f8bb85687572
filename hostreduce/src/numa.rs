//! Which CPUs the reducer threads run on: those of the GPU's NUMA node, where the machine has
//! several, so that the threads reduce the segment next to the GPU's PCIe root, not across the
//! socket link. Pure parts here (parsing sysfs lists, the choice); reading sysfs and setting the
//! affinity are in [`crate::ffi::shm`].
use std::path::Path;

/// A kernel CPU list ("0-3,8,10-11") as CPU numbers, ascending; None if malformed.
pub fn parse_cpulist(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b || b - a > 1 << 16 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The reducer CPUs: the GPU node's CPUs this process may use, when there are several nodes and
/// that leaves any; None keeps the threads wherever the scheduler puts them.
pub fn choose(nodes: usize, node_cpus: &[usize], allowed: &[usize]) -> Option<Vec<usize>> {
    if nodes < 2 {
        return None;
    }
    let both: Vec<usize> = node_cpus.iter().copied().filter(|c| allowed.contains(c)).collect();
    (!both.is_empty()).then_some(both)
}

/// The NUMA node of the PCI device `bus_id` ("0000:3B:00.0" as CUDA writes it) under `sys` (/sys),
/// and the node's CPUs; None where the kernel does not say (-1, or no such files).
pub fn gpu_node(sys: &Path, bus_id: &str) -> Option<(usize, Vec<usize>)> {
    let dev = sys.join("bus/pci/devices").join(bus_id.to_ascii_lowercase());
    let node: i64 = std::fs::read_to_string(dev.join("numa_node")).ok()?.trim().parse().ok()?;
    let node = usize::try_from(node).ok()?;
    let cpus = parse_cpulist(&std::fs::read_to_string(sys.join(format!("devices/system/node/node{node}/cpulist"))).ok()?)?;
    Some((node, cpus))
}

/// NUMA nodes with CPUs under `sys` (/sys); 1 where the kernel does not say.
pub fn nodes(sys: &Path) -> usize {
    std::fs::read_to_string(sys.join("devices/system/node/has_cpu")).ok().and_then(|t| parse_cpulist(&t)).map_or(1, |v| v.len().max(1))
}

/// Shortens a CPU list for a log line ("16-31,48-63").
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpulist(""), Some(vec![]));
        assert_eq!(parse_cpulist("5"), Some(vec![5]));
        for bad in ["a", "3-1", "1-", "-1", "0-99999999"] {
            assert_eq!(parse_cpulist(bad), None, "{bad}");
        }
        assert_eq!(format_cpulist(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpulist(&[]), "");
    }

    #[test]
    fn reducers_go_to_the_gpus_node_where_the_task_may_run_there() {
        let node1: Vec<usize> = (16..32).collect();
        let all: Vec<usize> = (0..64).collect();
        assert_eq!(choose(1, &node1, &all), None, "one node: nothing to choose");
        assert_eq!(choose(2, &node1, &all), Some(node1.clone()));
        assert_eq!(choose(2, &node1, &[20, 21, 40]), Some(vec![20, 21]), "only CPUs the task may use");
        assert_eq!(choose(2, &node1, &[0, 1]), None, "the task is bound elsewhere: left alone");
    }

    #[test]
    fn the_gpus_node_comes_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        let dev = sys.join("bus/pci/devices/0000:3b:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(sys.join("devices/system/node/node1")).unwrap();
        std::fs::write(sys.join("devices/system/node/has_cpu"), "0-1\n").unwrap();
        std::fs::write(sys.join("devices/system/node/node1/cpulist"), "16-31\n").unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        assert_eq!(nodes(sys), 2);
        assert_eq!(gpu_node(sys, "0000:3B:00.0"), Some((1, (16..32).collect())), "CUDA's upper-case bus id");
        std::fs::write(dev.join("numa_node"), "-1\n").unwrap();
        assert_eq!(gpu_node(sys, "0000:3B:00.0"), None, "the kernel does not know");
        assert_eq!(gpu_node(sys, "0000:99:00.0"), None);
        assert_eq!(nodes(&sys.join("nothing")), 1);
    }
}
