//! Speed of the CPU reduction alone (no GPU): k inputs of one slot each into an output, as the
//! reducer threads do per chunk, for fp32, bf16 and fp16, on 1..T threads. One JSON line per
//! measurement (bench/hostreduce.sh runs it on the GPU machine; speed numbers never live in tests).
//!
//!   cargo run --release -p flexmig-hostreduce --example reduce_speed [SLOT_KIB] [THREADS...]
use flexmig_hostreduce::reduce::{reduce_threads, DType, Op};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let slot = args.first().copied().unwrap_or(2048) << 10;
    let threads: Vec<usize> = if args.len() > 1 { args[1..].to_vec() } else { vec![1, 2] };
    for dtype in [DType::F32, DType::Bf16, DType::F16] {
        for k in [2usize, 4, 7] {
            // Several slot sets in rotation, as the pipeline's depth does (no single set stays in cache).
            let sets: Vec<Vec<Vec<u8>>> = (0..4)
                .map(|s| (0..k).map(|r| flexmig_hostreduce::sim::test_input(7, s, r, dtype, slot / dtype.size())).collect())
                .collect();
            let mut out = vec![0u8; slot];
            for &t in &threads {
                let reps = (2usize << 30) / (slot * (k + 1)) + 4;
                let t0 = Instant::now();
                for i in 0..reps {
                    let ins: Vec<&[u8]> = sets[i % sets.len()].iter().map(|v| v.as_slice()).collect();
                    reduce_threads(dtype, Op::Sum, &ins, &mut out, t).unwrap();
                }
                let s = t0.elapsed().as_secs_f64();
                let out_gbps = (reps * slot) as f64 / s / 1e9;
                println!(
                    "{{\"kind\": \"cpu_reduce\", \"dtype\": \"{dtype}\", \"k\": {k}, \"slot_bytes\": {slot}, \"threads\": {t}, \"out_GBps\": {out_gbps:.2}, \"memory_GBps\": {:.2}}}",
                    out_gbps * (k + 1) as f64
                );
            }
        }
    }
}
