//! Bounded property-based fuzzing of the parsers that read input in every task: the node
//! inventory, the plugstack arguments, the node name and Slurm's GRES lists. Each run mutates
//! valid input (and feeds arbitrary input) a few thousand times; no parser may panic, and
//! whatever they accept must be consistent. `PROPTEST_CASES=100000 cargo test -p flexmig-spank
//! --test fuzz_parsers` runs longer.

use flexmig_spank::binding::{allocated_types, parse_index_list};
use flexmig_spank::config::{Mode, NodeName, PluginArgs};
use leaf_model::Inventory;
use proptest::prelude::*;

const INVENTORY: &str = r#"version = 1
[[gpu]]
index = 0
uuid = "GPU-e0000000-0000-4000-8000-000000000000"
bus_id = "00000000:40:00.0"
model = "NVIDIA H100 80GB HBM3"
[[gpu]]
index = 1
uuid = "GPU-e0000000-0000-4000-8000-000000000001"
bus_id = "00000000:41:00.0"
model = "NVIDIA H100 80GB HBM3"
[[leaf]]
gres_index = 0
gpu = 0
profile = "1g.20gb"
uuid = "MIG-e0000000-0006-4000-8000-000000000000"
[[leaf]]
gres_index = 1
gpu = 1
profile = "1g.20gb"
uuid = "MIG-e0000001-0006-4000-8000-000000000001"
cuda_device = "MIG-e0000001-0006-4000-8000-000000000001"
[[leaf]]
gres_index = 2
gpu = 0
profile = "1g.10gb"
uuid = "MIG-e0000000-0000-4000-8000-000000000002"
"#;

/// One edit of a text: replace, insert or delete a byte, or duplicate, drop or swap lines.
#[derive(Debug, Clone)]
enum Edit {
    Byte(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    DupLine(usize),
    DropLine(usize),
    SwapLines(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to TOML and to the values, more often than the rest.
    let byte = prop_oneof![
        3 => prop::sample::select(b"=\"[]{}.,:#\n 0123456789-_gMIabx\\\x00\xff".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Byte(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::DupLine),
        any::<usize>().prop_map(Edit::DropLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        let n = bytes.len().max(1);
        match *e {
            Edit::Byte(i, b) if !bytes.is_empty() => bytes[i % n] = b,
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % n);
            }
            Edit::DupLine(i) | Edit::DropLine(i) | Edit::SwapLines(i, _) => {
                let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let k = i % lines.len();
                match *e {
                    Edit::DupLine(_) => lines.insert(k, lines[k].clone()),
                    Edit::DropLine(_) => {
                        lines.remove(k);
                    }
                    Edit::SwapLines(_, j) => {
                        let j = j % lines.len();
                        lines.swap(k, j);
                    }
                    _ => unreachable!(),
                }
                bytes = lines.join(&b'\n');
            }
            _ => {}
        }
    }
    bytes
}

fn plugstack_arg() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["inventory", "nccl", "torch_env", "master_ports", "lock_dir", "nccl_max_channels", "bogus", ""]);
    let value = prop_oneof![
        Just("/etc/slurm/flexmig.toml".to_string()),
        Just("/run/flexmig/%n".to_string()),
        Just("/a/../b".to_string()),
        Just("relative".to_string()),
        Just("yes".to_string()),
        Just("20000-32767".to_string()),
        Just("0".to_string()),
        Just("off".to_string()),
        "[ -~]{0,12}",
    ];
    prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => "[ -~]{0,16}",
    ]
}

proptest! {
    // No regression files are written into the source tree: a failure prints its minimal input.
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_inventories_are_refused_or_consistent(edits in prop::collection::vec(edit(), 1..6)) {
        let text = String::from_utf8_lossy(&apply(INVENTORY, &edits)).into_owned();
        match Inventory::parse(&text, "fuzz.toml") {
            Ok(inv) => {
                // What is accepted is consistent, and survives a round trip (which orders GPUs
                // and leaves by index).
                prop_assert!(inv.validate().is_ok());
                let again = Inventory::parse(&inv.to_toml_string(), "again").unwrap();
                let by_index = |i: &Inventory| {
                    let (mut g, mut l) = (i.gpus.clone(), i.leaves.clone());
                    g.sort_by_key(|g| g.index);
                    l.sort_by_key(|l| l.gres_index);
                    (g, l)
                };
                prop_assert_eq!(by_index(&again), by_index(&inv));
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.toml"), "the error names the file: {}", e),
        }
    }

    #[test]
    fn arbitrary_inventory_text_never_panics(text in ".{0,400}") {
        let _ = Inventory::parse(&text, "fuzz.toml");
    }

    #[test]
    fn plugstack_arguments_are_refused_or_sane(args in prop::collection::vec(plugstack_arg(), 0..6)) {
        match PluginArgs::parse(&args) {
            Ok(a) => {
                for p in [Some(&a.inventory), a.nccl.as_ref(), Some(&a.lock_dir)].into_iter().flatten() {
                    prop_assert!(p.is_absolute() && !p.components().any(|c| c == std::path::Component::ParentDir), "{:?}", p);
                }
                prop_assert!(a.master_ports.0 >= 1024 && a.master_ports.0 <= a.master_ports.1);
                prop_assert!(a.nccl_max_channels.iter().all(|n| (1..=64).contains(n)));
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.starts_with("flexmig: bad argument `") && e.contains("plugstack.conf"), "{}", e);
            }
        }
    }

    #[test]
    fn node_names_never_leave_the_directory(name in "[a-z0-9./_\\-]{0,12}") {
        if let Ok(n) = NodeName::parse(&name) {
            prop_assert!(!n.as_str().contains('/') && !n.as_str().contains("..") && !n.as_str().starts_with('.'));
        }
    }

    #[test]
    fn slurm_lists_never_panic(list in "[0-9,\\-():a-z.gIDXCNT]{0,40}", mode in ".{0,8}") {
        let _ = parse_index_list(&list);
        let _ = allocated_types(&list);
        let _ = Mode::parse(Some(&mode));
    }
}
