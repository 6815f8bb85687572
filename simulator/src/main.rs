fn main() { eprintln!("flexmig-sim: not built yet"); std::process::exit(2); }
