//! The CPU reduction: k input buffers into one output, element-wise sum or average.
//!
//! fp32 is summed in fp32; bf16 and fp16 are widened to fp32, summed in fp32 and rounded back
//! once, to nearest even. The sum runs in rank order (input 0 + input 1 + ...), so every rank of a
//! communicator reads the same bits, and a scalar reference ([`reduce_scalar`]) gives exactly the
//! same result. Average is that fp32 sum divided by k, then rounded.
//!
//! The loops work on blocks of [`BLOCK`] elements held in an fp32 accumulator array, so LLVM turns
//! them into vector code; on x86-64 a copy compiled for AVX2 is picked at run time, and fp16
//! converts with the F16C instructions. Inputs and output are byte slices (they live in shared memory); elements are
//! little-endian, as the GPU writes them.

use std::fmt;

/// Elements per block of the vector loops: 256 bytes of fp32, a few cache lines per input.
pub const BLOCK: usize = 64;

/// Element types the host reduction supports (NCCL's ncclFloat32, ncclBfloat16, ncclFloat16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

/// Reductions the host path supports (NCCL's ncclSum and ncclAvg).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Sum,
    Avg,
}

/// fp32 from the upper half of its bits: bf16 is a truncated fp32, so widening is exact.
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// fp32 to bf16, round to nearest even; NaN stays NaN (made quiet), overflow goes to infinity.
#[inline(always)]
pub fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    // Adding 0x7fff plus the lowest kept bit rounds half-way cases towards the even neighbour.
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// fp16 to fp32, exact for every input (normals, subnormals, infinities, NaN), after F. Giesen's
/// half_to_float. All three cases are computed and one is selected, so the vector loops stay
/// branch-free.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let shifted_exp = 0x7c00u32 << 13;
    let o = (h & 0x7fff) << 13;
    let exp = shifted_exp & o;
    let normal = o + ((127 - 15) << 23);
    let inf_nan = normal + ((128 - 16) << 23);
    // subnormal: renormalise through an fp32 subtraction
    let sub = (f32::from_bits(normal + (1 << 23)) - f32::from_bits(113 << 23)).to_bits();
    let r = if exp == shifted_exp {
        inf_nan
    } else if exp == 0 {
        sub
    } else {
        normal
    };
    f32::from_bits(r | ((h & 0x8000) << 16))
}

/// fp32 to fp16, round to nearest even, overflow to infinity, NaN to a quiet NaN (after F. Giesen's
/// float_to_half_fast3_rtne), branch-free like [`f16_to_f32`].
#[inline(always)]
pub fn f32_to_f16(f: f32) -> u16 {
    let f32_infty = 255u32 << 23;
    let f16_max = (127 + 16) << 23;
    let denorm_magic = ((127 - 15) + (23 - 10) + 1) << 23;
    let u0 = f.to_bits();
    let sign = u0 & 0x8000_0000;
    let u = u0 ^ sign;
    let big = if u > f32_infty { 0x7e00 } else { 0x7c00 };
    // result subnormal (or zero): the fp32 adder rounds at the right bit
    let sub = (f32::from_bits(u) + f32::from_bits(denorm_magic)).to_bits().wrapping_sub(denorm_magic);
    // normal: re-bias the exponent and add the rounding bias (0xfff, plus one when the kept part is odd)
    let mant_odd = (u >> 13) & 1;
    let normal = u.wrapping_add(((15i32 - 127) << 23) as u32).wrapping_add(0xfff + mant_odd) >> 13;
    let o = if u >= f16_max {
        big
    } else if u < (113 << 23) {
        sub
    } else {
        normal
    };
    (o | (sign >> 16)) as u16
}

/// One element type's load and store, widening to and narrowing from the fp32 accumulator.
trait Elem {
    const SIZE: usize;
    fn load(b: &[u8]) -> f32;
    fn store(v: f32, b: &mut [u8]);
}

struct F32;
struct Bf16;
struct F16;

impl Elem for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    #[inline(always)]
    fn store(v: f32, b: &mut [u8]) {
        b[..4].copy_from_slice(&v.to_le_bytes());
    }
}

impl Elem for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))
    }
    #[inline(always)]
    fn store(v: f32, b: &mut [u8]) {
        b[..2].copy_from_slice(&f32_to_bf16(v).to_le_bytes());
    }
}

impl Elem for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    fn load(b: &[u8]) -> f32 {
        f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
    }
    #[inline(always)]
    fn store(v: f32, b: &mut [u8]) {
        b[..2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
    }
}

/// Why a reduction was refused: the buffers do not fit together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReduceError {
    #[error("reduce: no input buffers")]
    NoInputs,
    #[error("reduce: input {index} has {got} bytes, the output {want}")]
    LengthMismatch { index: usize, got: usize, want: usize },
    #[error("reduce: {bytes} bytes is not a whole number of {dtype} elements")]
    PartialElement { bytes: usize, dtype: DType },
}

fn check(dtype: DType, inputs: &[&[u8]], out: &[u8]) -> Result<(), ReduceError> {
    if inputs.is_empty() {
        return Err(ReduceError::NoInputs);
    }
    if out.len() % dtype.size() != 0 {
        return Err(ReduceError::PartialElement { bytes: out.len(), dtype });
    }
    for (index, inp) in inputs.iter().enumerate() {
        if inp.len() != out.len() {
            return Err(ReduceError::LengthMismatch { index, got: inp.len(), want: out.len() });
        }
    }
    Ok(())
}

/// The block loop shared by every element type and instruction set: accumulate BLOCK elements of
/// each input in turn into an fp32 array, then narrow and store them.
#[inline(always)]
fn blocks<E: Elem>(inputs: &[&[u8]], out: &mut [u8], div: Option<f32>) {
    let bb = BLOCK * E::SIZE;
    let whole = out.len() / bb * bb;
    let (out_blocks, out_tail) = out.split_at_mut(whole);
    for (b, o) in out_blocks.chunks_exact_mut(bb).enumerate() {
        let lo = b * bb;
        let mut acc = [0f32; BLOCK];
        let first = &inputs[0][lo..lo + bb];
        for (a, x) in acc.iter_mut().zip(first.chunks_exact(E::SIZE)) {
            *a = E::load(x);
        }
        for inp in &inputs[1..] {
            let s = &inp[lo..lo + bb];
            for (a, x) in acc.iter_mut().zip(s.chunks_exact(E::SIZE)) {
                *a += E::load(x);
            }
        }
        if let Some(d) = div {
            for a in acc.iter_mut() {
                *a /= d;
            }
        }
        for (a, y) in acc.iter().zip(o.chunks_exact_mut(E::SIZE)) {
            E::store(*a, y);
        }
    }
    for (i, y) in out_tail.chunks_exact_mut(E::SIZE).enumerate() {
        let at = whole + i * E::SIZE;
        let mut a = E::load(&inputs[0][at..]);
        for inp in &inputs[1..] {
            a += E::load(&inp[at..]);
        }
        if let Some(d) = div {
            a /= d;
        }
        E::store(a, y);
    }
}

fn blocks_dispatch<E: Elem>(inputs: &[&[u8]], out: &mut [u8], div: Option<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn wide<E: Elem>(inputs: &[&[u8]], out: &mut [u8], div: Option<f32>) {
            blocks::<E>(inputs, out, div)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has the features `wide` was compiled for (checked just above); the
            // function itself is safe code.
            return unsafe { wide::<E>(inputs, out, div) };
        }
    }
    blocks::<E>(inputs, out, div)
}

/// fp16 with the F16C conversion instructions where the CPU has them: the portable widening and
/// rounding (Giesen's bit arithmetic) are most of the work otherwise, about a third of bf16's rate.
/// The result is bit for bit [`blocks`]'s: the hardware rounds to nearest even as
/// [`f32_to_f16`] does, and every NaN is made the quiet NaN of its sign first, as that function
/// makes it (the hardware would keep part of the payload).
fn f16_dispatch(inputs: &[&[u8]], out: &mut [u8], div: Option<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has the features f16c_blocks was compiled for (checked just above),
            // and every input has out.len() bytes (`check`, run by every caller).
            unsafe { f16c_blocks(inputs, out, div) };
            return;
        }
    }
    blocks_dispatch::<F16>(inputs, out, div)
}

/// # Safety
/// The CPU must have AVX2 and F16C, and every input as many bytes as `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16c_blocks(inputs: &[&[u8]], out: &mut [u8], div: Option<f32>) {
    use std::arch::x86_64::*;
    const LANES: usize = 8;
    let whole = out.len() / 2 / BLOCK * BLOCK;
    // SAFETY: the block's loads and stores, of 16 bytes at element `at + v * LANES`, with
    // at + BLOCK <= whole and v < BLOCK / LANES, stay inside the first `whole` elements of `out`
    // and of every input (each input has out.len() bytes: the caller's promise).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let quiet = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc0_0000));
        let d = div.map(|d| _mm256_set1_ps(d));
        let mut at = 0;
        while at < whole {
            let mut acc = [_mm256_setzero_ps(); BLOCK / LANES];
            for (j, inp) in inputs.iter().enumerate() {
                let p = inp.as_ptr().add(at * 2);
                for (v, a) in acc.iter_mut().enumerate() {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(p.add(v * LANES * 2) as *const __m128i));
                    *a = if j == 0 { x } else { _mm256_add_ps(*a, x) };
                }
            }
            let o = out.as_mut_ptr().add(at * 2);
            for (v, a) in acc.iter().enumerate() {
                let mut a = *a;
                if let Some(d) = d {
                    a = _mm256_div_ps(a, d);
                }
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a);
                a = _mm256_blendv_ps(a, _mm256_or_ps(_mm256_and_ps(a, sign), quiet), nan);
                _mm_storeu_si128(o.add(v * LANES * 2) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a));
            }
            at += BLOCK;
        }
    }
    if whole * 2 < out.len() {
        let tail: Vec<&[u8]> = inputs.iter().map(|i| &i[whole * 2..]).collect();
        blocks::<F16>(&tail, &mut out[whole * 2..], div);
    }
}

/// MXCSR's power-on value: round to nearest even, denormals neither flushed (FTZ) nor read as
/// zero (DAZ), every exception masked.
#[cfg(target_arch = "x86_64")]
pub(crate) const MXCSR_DEFAULT: u32 = 0x1f80;

/// This thread's MXCSR.
#[cfg(target_arch = "x86_64")]
pub(crate) fn mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stmxcsr stores the 4-byte MXCSR at the address given, a local u32.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
    csr
}

/// Sets this thread's MXCSR (its reserved upper bits kept zero); Rust code on the thread then runs
/// under that environment.
#[cfg(target_arch = "x86_64")]
pub(crate) fn set_mxcsr(csr: u32) {
    let csr = csr & 0xffff;
    // SAFETY: ldmxcsr loads a 4-byte value from a local u32 whose reserved bits are zero.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags, readonly)) };
}

/// Gives the calling thread the floating-point environment the reduction is defined in (and Rust
/// code assumes): round to nearest even, no flush to zero, no denormals read as zero. A new thread
/// inherits its creator's MXCSR, and the reducer threads are created on the application's thread
/// inside `ncclCommInitRank`; an application that flushes denormals on that thread (PyTorch's
/// `torch.set_flush_denormal(True)` sets FTZ and DAZ) or rounds otherwise would change the sums of
/// fp32 and bf16 (and the portable fp16 rounding, while the F16C conversion always rounds to
/// nearest even). Called first on every thread of ours that reduces; the thread keeps it.
pub fn use_default_fp_env() {
    #[cfg(target_arch = "x86_64")]
    if mxcsr() & !0x3f != MXCSR_DEFAULT {
        set_mxcsr(MXCSR_DEFAULT);
    }
}

/// Reduces `inputs` element-wise into `out` (all the same length, a whole number of elements).
///
/// The result is defined for the default floating-point environment ([`use_default_fp_env`]);
/// the library's reducer threads have it.
///
/// # Errors
/// [`ReduceError`] when there are no inputs or the lengths do not fit.
pub fn reduce(dtype: DType, op: Op, inputs: &[&[u8]], out: &mut [u8]) -> Result<(), ReduceError> {
    check(dtype, inputs, out)?;
    let div = match op {
        Op::Sum => None,
        Op::Avg => Some(inputs.len() as f32),
    };
    match dtype {
        DType::F32 => blocks_dispatch::<F32>(inputs, out, div),
        DType::Bf16 => blocks_dispatch::<Bf16>(inputs, out, div),
        DType::F16 => f16_dispatch(inputs, out, div),
    }
    Ok(())
}

/// The same reduction split over `threads` scoped threads by ranges of [`BLOCK`] elements (each
/// thread's range is [`share`] of the element count), for callers that reduce one buffer alone.
///
/// # Errors
/// As [`reduce`].
pub fn reduce_threads(dtype: DType, op: Op, inputs: &[&[u8]], out: &mut [u8], threads: usize) -> Result<(), ReduceError> {
    check(dtype, inputs, out)?;
    let n = out.len() / dtype.size();
    let threads = threads.max(1);
    std::thread::scope(|s| {
        let mut rest = out;
        let mut done = 0;
        for t in 0..threads {
            let r = share(n, threads, t);
            let (mine, tail) = rest.split_at_mut((r.end - done) * dtype.size());
            rest = tail;
            let lo = r.start * dtype.size();
            let hi = r.end * dtype.size();
            done = r.end;
            let ins: Vec<&[u8]> = inputs.iter().map(|i| &i[lo..hi]).collect();
            s.spawn(move || {
                use_default_fp_env();
                reduce(dtype, op, &ins, mine)
            });
        }
    });
    Ok(())
}

/// The element range that share `index` of `shares` takes of `n` elements: contiguous, in order,
/// starting on [`BLOCK`] boundaries so each share runs the vector loop; trailing shares may be
/// empty when `n` is small.
pub fn share(n: usize, shares: usize, index: usize) -> std::ops::Range<usize> {
    let blocks = n.div_ceil(BLOCK);
    let per = blocks.div_ceil(shares.max(1));
    let lo = (index * per * BLOCK).min(n);
    let hi = ((index + 1) * per * BLOCK).min(n);
    lo..hi
}

/// The reference: one element at a time, the same order and rounding as [`reduce`].
///
/// # Errors
/// As [`reduce`].
pub fn reduce_scalar(dtype: DType, op: Op, inputs: &[&[u8]], out: &mut [u8]) -> Result<(), ReduceError> {
    check(dtype, inputs, out)?;
    let size = dtype.size();
    let load = |b: &[u8]| match dtype {
        DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::Bf16 => bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        DType::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
    };
    for i in 0..out.len() / size {
        let at = i * size;
        let mut a = 0f32;
        for (j, inp) in inputs.iter().enumerate() {
            let x = load(&inp[at..at + size]);
            a = if j == 0 { x } else { a + x };
        }
        if op == Op::Avg {
            a /= inputs.len() as f32;
        }
        match dtype {
            DType::F32 => out[at..at + 4].copy_from_slice(&a.to_le_bytes()),
            DType::Bf16 => out[at..at + 2].copy_from_slice(&f32_to_bf16(a).to_le_bytes()),
            DType::F16 => out[at..at + 2].copy_from_slice(&f32_to_f16(a).to_le_bytes()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every finite non-negative fp16 value, decoded exactly in f64 from its fields (not through
    /// the conversion under test), in increasing order of bits = increasing value.
    fn f16_values() -> Vec<f64> {
        (0u16..0x7c00)
            .map(|h| {
                let e = (h >> 10) as i32;
                let m = (h & 0x3ff) as f64;
                if e == 0 {
                    m * 2f64.powi(-24)
                } else {
                    (1.0 + m / 1024.0) * 2f64.powi(e - 15)
                }
            })
            .collect()
    }

    /// Round-to-nearest-even into a format given by its sorted non-negative finite values (bit
    /// pattern = index) and its infinity: the nearest value, ties to the even pattern; values past
    /// the largest finite by at least half a step (at the format's step there) become infinity.
    fn nearest(values: &[f64], infinity: u16, x: f64) -> u16 {
        let a = x.abs();
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let last = values.len() - 1;
        let step = values[last] - values[last - 1];
        if a >= values[last] + step / 2.0 {
            return sign | infinity;
        }
        let hi = values.partition_point(|&v| v < a).min(last);
        let lo = hi.saturating_sub(1);
        let pick = if values[hi] == a || hi == 0 {
            hi
        } else {
            let (dl, dh) = (a - values[lo], values[hi] - a);
            if dl < dh || (dl == dh && lo % 2 == 0) {
                lo
            } else {
                hi
            }
        };
        sign | pick as u16
    }

    #[test]
    fn f16_widening_is_exact_for_every_value() {
        let vals = f16_values();
        for (h, v) in vals.iter().enumerate() {
            assert_eq!(f16_to_f32(h as u16) as f64, *v, "fp16 {h:#06x}");
            assert_eq!(f16_to_f32(h as u16 | 0x8000) as f64, -*v, "fp16 {:#06x}", h | 0x8000);
        }
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan() && f16_to_f32(0x7c01).is_nan());
    }

    /// f32 inputs around every fp16 value and midpoint (where ties are decided), plus a stride
    /// through all f32 bit patterns.
    fn f32_probes(values: &[f64]) -> Vec<f32> {
        let mut xs = Vec::new();
        for w in values.windows(2) {
            for v in [w[0], (w[0] + w[1]) / 2.0] {
                let f = v as f32;
                assert_eq!(f as f64, v, "probe {v} not exact in f32");
                for g in [f32::from_bits(f.to_bits().wrapping_sub(1)), f, f32::from_bits(f.to_bits() + 1)] {
                    xs.push(g);
                    xs.push(-g);
                }
            }
        }
        xs.extend((0..u32::MAX / 7919).map(|i| f32::from_bits(i * 7919)));
        xs
    }

    #[test]
    fn f16_rounding_is_nearest_even() {
        let vals = f16_values();
        for x in f32_probes(&vals) {
            let got = f32_to_f16(x);
            if x.is_nan() {
                assert!(f16_to_f32(got).is_nan(), "{x} -> {got:#06x}");
                continue;
            }
            let want = if x.is_infinite() { (if x < 0.0 { 0x8000 } else { 0 }) | 0x7c00 } else { nearest(&vals, 0x7c00, x as f64) };
            assert_eq!(got, want, "f32 {x:e} ({:#010x})", x.to_bits());
        }
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        // bf16's finite non-negative values are the f32 values whose low 16 bits are zero.
        let vals: Vec<f64> = (0u32..0x7f80).map(|h| f32::from_bits(h << 16) as f64).collect();
        let mut xs = f32_probes(&f16_values());
        // ties and their neighbours at many bf16 exponents, and the overflow edge
        for h in (0u32..0x7f80).step_by(97).chain([0x7f7e, 0x7f7f]) {
            let mid = (h << 16) | 0x8000;
            for u in [mid - 1, mid, mid + 1] {
                xs.push(f32::from_bits(u));
                xs.push(-f32::from_bits(u));
            }
        }
        for x in xs {
            let got = f32_to_bf16(x);
            if x.is_nan() {
                assert!(bf16_to_f32(got).is_nan());
                continue;
            }
            let want = if x.is_infinite() { (if x < 0.0 { 0x8000 } else { 0 }) | 0x7f80 } else { nearest(&vals, 0x7f80, x as f64) };
            assert_eq!(got, want, "f32 {x:e} ({:#010x})", x.to_bits());
        }
    }

    /// A small deterministic generator (xorshift), so tests need no crate and repeat exactly.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Random values of `dtype` in [-4, 4) with full mantissas, as little-endian bytes.
        pub fn buffer(&mut self, dtype: DType, n: usize) -> Vec<u8> {
            let mut b = Vec::with_capacity(n * dtype.size());
            for _ in 0..n {
                let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0;
                match dtype {
                    DType::F32 => b.extend_from_slice(&(v as f32).to_le_bytes()),
                    DType::Bf16 => b.extend_from_slice(&f32_to_bf16(v as f32).to_le_bytes()),
                    DType::F16 => b.extend_from_slice(&f32_to_f16(v as f32).to_le_bytes()),
                }
            }
            b
        }
    }

    #[test]
    fn vector_reduce_matches_the_scalar_reference_bit_for_bit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for dtype in [DType::F32, DType::Bf16, DType::F16] {
            for op in [Op::Sum, Op::Avg] {
                for k in [1, 2, 3, 5, 7] {
                    // whole blocks, a tail, less than a block, one element
                    for n in [BLOCK * 37, BLOCK * 5 + 13, 17, 1] {
                        let ins: Vec<Vec<u8>> = (0..k).map(|_| rng.buffer(dtype, n)).collect();
                        let refs: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
                        let mut want = vec![0xa5u8; n * dtype.size()];
                        reduce_scalar(dtype, op, &refs, &mut want).unwrap();
                        let mut got = vec![0x5au8; n * dtype.size()];
                        reduce(dtype, op, &refs, &mut got).unwrap();
                        assert_eq!(got, want, "{dtype} {op:?} k={k} n={n}");
                        let mut par = vec![0x33u8; n * dtype.size()];
                        reduce_threads(dtype, op, &refs, &mut par, 3).unwrap();
                        assert_eq!(par, want, "threads: {dtype} {op:?} k={k} n={n}");
                    }
                }
            }
        }
    }

    /// Whether `x` (little-endian bytes of one `dtype` element) is a NaN.
    fn is_nan(dtype: DType, x: &[u8]) -> bool {
        match dtype {
            DType::F32 => f32::from_le_bytes([x[0], x[1], x[2], x[3]]).is_nan(),
            DType::Bf16 => bf16_to_f32(u16::from_le_bytes([x[0], x[1]])).is_nan(),
            DType::F16 => f16_to_f32(u16::from_le_bytes([x[0], x[1]])).is_nan(),
        }
    }

    #[test]
    fn any_bits_reduce_as_the_scalar_reference_does() {
        // Every class of value: NaNs with payloads (quiet and signalling), infinities, subnormals,
        // sums that overflow or round to a subnormal. Bit for bit, except which NaN a NaN sum is:
        // LLVM may swap the operands of an addition, which picks the other input's payload.
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for dtype in [DType::F32, DType::Bf16, DType::F16] {
            for op in [Op::Sum, Op::Avg] {
                for k in [1, 2, 3, 7] {
                    let n = BLOCK * 64 + 5;
                    let ins: Vec<Vec<u8>> = (0..k).map(|_| (0..n * dtype.size()).map(|_| rng.next() as u8).collect()).collect();
                    let refs: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
                    let mut want = vec![0u8; n * dtype.size()];
                    reduce_scalar(dtype, op, &refs, &mut want).unwrap();
                    let mut got = vec![0u8; n * dtype.size()];
                    reduce(dtype, op, &refs, &mut got).unwrap();
                    let size = dtype.size();
                    for (i, (g, w)) in got.chunks_exact(size).zip(want.chunks_exact(size)).enumerate() {
                        let same = g == w || (is_nan(dtype, g) && is_nan(dtype, w));
                        assert!(same, "{dtype} {op:?} k={k} element {i}: {g:02x?}, the reference {w:02x?}");
                    }
                    let nans = want.chunks_exact(size).filter(|w| is_nan(dtype, w)).count();
                    assert!(nans > 0 && nans < n, "{dtype}: the inputs cover NaN and other values ({nans} NaN of {n})");
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn threads_made_by_a_thread_that_flushes_denormals_still_reduce_exactly() {
        // Tiny values (fp32 and bf16 exponents 0-3: subnormals and the smallest normals, whose
        // sums and averages are subnormal) and any fp16 bits (averages round): under FTZ/DAZ and
        // round-toward-zero, inherited by new threads, every one of these would differ.
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let n = BLOCK * 40 + 7;
        for (dtype, mask) in [(DType::F32, 0x81ff_ffffu32), (DType::Bf16, 0x81ff), (DType::F16, 0xffff)] {
            for op in [Op::Sum, Op::Avg] {
                let ins: Vec<Vec<u8>> = (0..3)
                    .map(|_| {
                        (0..n)
                            .flat_map(|_| {
                                let b = (rng.next() as u32 & mask).to_le_bytes();
                                b[..dtype.size()].to_vec()
                            })
                            .collect()
                    })
                    .collect();
                let refs: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
                let mut want = vec![0u8; n * dtype.size()];
                reduce_scalar(dtype, op, &refs, &mut want).unwrap();
                let mut got = vec![0u8; n * dtype.size()];
                let flushed = crate::sim::with_mxcsr(crate::sim::MXCSR_FLUSH_TRUNCATE, || {
                    reduce_threads(dtype, op, &refs, &mut got, 2).unwrap();
                    // this thread itself does flush: the test would see an inherited environment
                    std::hint::black_box(f32::from_bits(1)) + std::hint::black_box(0.0f32)
                });
                assert_eq!(flushed, 0.0, "MXCSR {:#x} flushes denormals here", crate::sim::MXCSR_FLUSH_TRUNCATE);
                // (which NaN a NaN sum is depends on the order of an addition's operands)
                let differ = got
                    .chunks_exact(dtype.size())
                    .zip(want.chunks_exact(dtype.size()))
                    .filter(|(g, w)| g != w && !(is_nan(dtype, g) && is_nan(dtype, w)))
                    .count();
                assert_eq!(differ, 0, "{dtype} {op:?}: {differ} of {n} elements differ from the reference");
            }
        }
    }

    #[test]
    fn every_fp16_value_reduces_as_the_scalar_reference_does() {
        // Input 0 holds every fp16 bit pattern once, the others the same shifted by an offset, so
        // every value (subnormals, the largest normals, whose sums overflow, infinities, NaNs) meets
        // many partners: ties of the final rounding, sums that cancel to signed zeros, subnormal
        // averages. On a CPU with F16C this is the F16C path against the portable code.
        let every: Vec<u16> = (0..=u16::MAX).collect();
        let bytes = |off: u16| -> Vec<u8> { every.iter().flat_map(|&h| h.wrapping_add(off).to_le_bytes()).collect() };
        for offsets in [&[1u16][..], &[0x8000], &[0x0401], &[0x7bff], &[0x3c00, 0xbc00], &[0x0001, 0x8401, 0x2345, 0xfedc, 0x0400, 0x7c00]]
        {
            let ins: Vec<Vec<u8>> = std::iter::once(0).chain(offsets.iter().copied()).map(bytes).collect();
            let refs: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
            for op in [Op::Sum, Op::Avg] {
                let mut want = vec![0u8; refs[0].len()];
                reduce_scalar(DType::F16, op, &refs, &mut want).unwrap();
                let mut got = vec![0u8; refs[0].len()];
                reduce(DType::F16, op, &refs, &mut got).unwrap();
                for (i, (g, w)) in got.chunks_exact(2).zip(want.chunks_exact(2)).enumerate() {
                    let same = g == w || (is_nan(DType::F16, g) && is_nan(DType::F16, w));
                    assert!(same, "{op:?} offsets {offsets:x?} element {i:#06x}: {g:02x?}, the reference {w:02x?}");
                }
            }
        }
    }

    #[test]
    fn reduced_values_are_the_rounded_fp32_sum() {
        // bf16: 1 + 2^-8 is exact in fp32 but lies halfway between two bf16 values: the even one
        // (1.0) wins; two such halves add to exactly representable 2 + 2^-7.
        let one = f32_to_bf16(1.0).to_le_bytes();
        let tiny = f32_to_bf16(2f32.powi(-8)).to_le_bytes();
        let mut out = [0u8; 2];
        reduce(DType::Bf16, Op::Sum, &[&one, &tiny], &mut out).unwrap();
        assert_eq!(bf16_to_f32(u16::from_le_bytes(out)), 1.0);
        let a = f32_to_bf16(1.0 + 2f32.powi(-7)).to_le_bytes();
        reduce(DType::Bf16, Op::Sum, &[&a, &a], &mut out).unwrap();
        assert_eq!(bf16_to_f32(u16::from_le_bytes(out)), 2.0 + 2f32.powi(-6));
        // fp16 accumulates in fp32: 2048 + 1 + 1 is 2050 (in fp16 alone, 2048 + 1 = 2048 first)
        let big = f32_to_f16(2048.0).to_le_bytes();
        let unit = f32_to_f16(1.0).to_le_bytes();
        reduce(DType::F16, Op::Sum, &[&big, &unit, &unit], &mut out).unwrap();
        assert_eq!(f16_to_f32(u16::from_le_bytes(out)), 2050.0);
        // average of 3 in fp32
        let x: Vec<u8> = [1f32, 2.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut o4 = [0u8; 4];
        reduce(DType::F32, Op::Avg, &[&x[0..4], &x[4..8], &x[8..12]], &mut o4).unwrap();
        assert_eq!(f32::from_le_bytes(o4), 3.0);
    }

    #[test]
    fn mismatched_buffers_are_refused() {
        let a = [0u8; 8];
        let b = [0u8; 4];
        let mut o = [0u8; 8];
        assert_eq!(reduce(DType::F32, Op::Sum, &[], &mut o), Err(ReduceError::NoInputs));
        assert_eq!(reduce(DType::F32, Op::Sum, &[&a, &b], &mut o), Err(ReduceError::LengthMismatch { index: 1, got: 4, want: 8 }));
        let mut odd = [0u8; 3];
        assert_eq!(reduce(DType::Bf16, Op::Sum, &[&a[..3]], &mut odd), Err(ReduceError::PartialElement { bytes: 3, dtype: DType::Bf16 }));
    }

    #[test]
    fn shares_cover_the_range_in_order_on_block_boundaries() {
        for n in [0, 1, BLOCK - 1, BLOCK, BLOCK * 7 + 3, 1 << 20] {
            for shares in [1, 2, 3, 7, 14, 64] {
                let mut next = 0;
                for i in 0..shares {
                    let r = share(n, shares, i);
                    assert_eq!(r.start, next, "n={n} shares={shares} i={i}");
                    assert!(r.start % BLOCK == 0 || r.start == n);
                    next = r.end;
                }
                assert_eq!(next, n, "n={n} shares={shares}");
            }
        }
    }
}
