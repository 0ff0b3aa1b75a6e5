//! llama.cpp's quantized matrix products on x86 CPUs, reproduced: its Q4_1 and
//! Q8_0 weights times activations that it first quantizes to Q8_1 / Q8_0.
//!
//! Candle computes the same products, but quantizes the activations differently:
//! it scales by `1 / d` and rounds halves away from zero where ggml's AVX2 code
//! (`quantize_row_q8_1`, `quantize_row_q8_0` in `ggml-cpu/arch/x86/quants.c`, used by
//! every x86-64 build with AVX2) scales by `127 / amax` and rounds halves to even, and
//! it stores a Q8_1 block's sum as `f16(f16(Σq) · f16(d))` where ggml stores
//! `f16(d · Σq)`. Each difference moves a few integer quants or a block sum by one
//! step; through 30 layers of a 135M model that moves logits by hundredths, as much
//! as the gap between its top two tokens, so greedy answers parted from llama.cpp's.
//! Here the quants are ggml's bit for bit, and every kernel sums in the order and
//! with the fused multiply-adds of ggml's x86-64 build for an AVX-512 CPU (GCC contracts
//! `a · b + c` where ggml's C leaves it to the compiler; which products it fused was
//! read from the compiled library and checked against its outputs), so that the
//! network's logits are llama.cpp's to the bit (llama-cpp-python 0.3.36, checked
//! layer by layer and by teacher-forced logits on the chat reference cases).
//! Algorithms reproduced from ggml (MIT, ggml-org/llama.cpp `ggml/src/ggml-cpu`).
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per block, for every type here.
const BLOCK: usize = 32;

/// A weight matrix in one of the types computed here, `(rows, columns)`, rows being
/// output features: llama.cpp's `src0` of `ggml_mul_mat`.
pub struct Matrix {
    kind: Kind,
    rows: usize,
    columns: usize,
}

enum Kind {
    Q4_1(Vec<Q4_1>),
    Q8_0(Vec<Q8_0>),
}

/// ggml's `block_q4_1`: `value = d · q + m`, scales widened from F16 once.
#[derive(Clone, Copy)]
struct Q4_1 {
    d: f32,
    m: f32,
    /// Values `j` (low nibble) and `j + 16` (high nibble).
    qs: [u8; 16],
}

/// ggml's `block_q8_0`, and `block_q8_1` with `s` (zero for Q8_0).
#[derive(Clone, Copy)]
struct Q8 {
    d: f32,
    /// `f16(d · Σ qs)`: what a Q4_1 block's minimum multiplies.
    s: f32,
    qs: [i8; BLOCK],
}

type Q8_0 = Q8;

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

impl Matrix {
    /// The matrix of `tensor` if its type is one computed here (Q4_1, Q8_0).
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<Self>> {
        let (rows, columns) = tensor.shape().dims2()?;
        if columns % BLOCK != 0 {
            return Ok(None);
        }
        let data = tensor.data()?;
        let kind = match tensor.dtype() {
            GgmlDType::Q4_1 => Kind::Q4_1(
                data.as_chunks::<20>()
                    .0
                    .iter()
                    .map(|b| Q4_1 {
                        d: half(&b[0..2]),
                        m: half(&b[2..4]),
                        qs: std::array::from_fn(|i| b[4 + i]),
                    })
                    .collect(),
            ),
            GgmlDType::Q8_0 => Kind::Q8_0(
                data.as_chunks::<34>()
                    .0
                    .iter()
                    .map(|b| Q8 {
                        d: half(&b[0..2]),
                        s: 0.0,
                        qs: std::array::from_fn(|i| b[2 + i].cast_signed()),
                    })
                    .collect(),
            ),
            _ => return Ok(None),
        };
        Ok(Some(Self {
            kind,
            rows,
            columns,
        }))
    }

    /// `x · selfᵀ` for `x` of shape `(…, columns)` on the CPU: `(…, rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&last, leading)) = dims.split_last() else {
            candle_core::bail!("a matrix product of a scalar");
        };
        if last != self.columns {
            candle_core::bail!("{last} input features for a matrix of {}", self.columns);
        }
        let input: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let blocks = self.columns / BLOCK;
        let mut output = vec![0f32; input.len() / self.columns * self.rows];
        for (row, out) in input
            .chunks_exact(self.columns)
            .zip(output.chunks_exact_mut(self.rows))
        {
            let quantized = quantize_q8(row, matches!(self.kind, Kind::Q4_1(_)));
            match &self.kind {
                Kind::Q4_1(weights) => {
                    dot_rows(weights, blocks, out, |w| fast::dot_q4_1(w, &quantized));
                }
                Kind::Q8_0(weights) => {
                    dot_rows(weights, blocks, out, |w| fast::dot_q8_0(w, &quantized));
                }
            }
        }
        let mut shape = leading.to_vec();
        shape.push(self.rows);
        Tensor::from_vec(output, shape, &Device::Cpu)
    }
}

/// The dot products compiled for the CPU's FMA and AVX2 where it has them: the same
/// arithmetic (Rust's `mul_add` is one rounding either way, integer sums are
/// exact), but without them every `mul_add` is a call to a software `fmaf`.
mod fast {
    use super::{Q4_1, Q8, Q8_0};

    #[cfg(target_arch = "x86_64")]
    fn has_fma() -> bool {
        std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2")
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn dot_q4_1_fma(weights: &[Q4_1], x: &[Q8]) -> f32 {
        super::dot_q4_1(weights, x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn dot_q8_0_fma(weights: &[Q8_0], x: &[Q8]) -> f32 {
        super::dot_q8_0(weights, x)
    }

    pub fn dot_q4_1(weights: &[Q4_1], x: &[Q8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { dot_q4_1_fma(weights, x) };
        }
        super::dot_q4_1(weights, x)
    }

    pub fn dot_q8_0(weights: &[Q8_0], x: &[Q8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { dot_q8_0_fma(weights, x) };
        }
        super::dot_q8_0(weights, x)
    }
}

/// `out[r] = dot(row r of weights)`, rows shared among threads.
fn dot_rows<B: Sync>(
    weights: &[B],
    blocks: usize,
    out: &mut [f32],
    dot: impl Fn(&[B]) -> f32 + Sync,
) {
    const ROWS_PER_TASK: usize = 64;
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            for (i, value) in out.iter_mut().enumerate() {
                let row = first + i;
                *value = dot(&weights[row * blocks..(row + 1) * blocks]);
            }
        });
}

/// ggml's x86 `quantize_row_q8_1` (`with_sum`) or `quantize_row_q8_0`.
fn quantize_q8(x: &[f32], with_sum: bool) -> Vec<Q8> {
    x.as_chunks::<BLOCK>()
        .0
        .iter()
        .map(|values| {
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
            #[allow(clippy::cast_possible_truncation)] // |v · id| ≤ 127 (+ rounding)
            let qs: [i8; BLOCK] = std::array::from_fn(|i| {
                (values[i] * id).round_ties_even().clamp(-128.0, 127.0) as i8
            });
            let s = if with_sum {
                let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
                #[allow(clippy::cast_precision_loss)] // |Σq| ≤ 4064: exact in f32
                f16::from_f32(d * sum as f32).to_f32()
            } else {
                0.0
            };
            Q8 {
                d: f16::from_f32(d).to_f32(),
                s,
                qs,
            }
        })
        .collect()
}

/// ggml's AVX2 `ggml_vec_dot_q4_1_q8_1`, in its order of summation.
#[allow(clippy::inline_always)] // into `fast`'s FMA copy, compiled with its features
#[inline(always)]
fn dot_q4_1(weights: &[Q4_1], x: &[Q8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (w, y) in weights.iter().zip(x) {
        // GCC contracts `summs += m · s` into one multiply-add.
        summs = w.m.mul_add(y.s, summs);
        let scale = w.d * y.d;
        let mut lanes = [0i32; 8];
        for j in 0..16 {
            lanes[j / 4] += i32::from(w.qs[j] & 0x0F) * i32::from(y.qs[j]);
            lanes[4 + j / 4] += i32::from(w.qs[j] >> 4) * i32::from(y.qs[j + 16]);
        }
        for (a, &l) in acc.iter_mut().zip(&lanes) {
            #[allow(clippy::cast_precision_loss)] // |l| ≤ 4 · 15 · 128: exact
            let l = l as f32;
            *a = scale.mul_add(l, *a);
        }
    }
    hsum8(acc) + summs
}

/// ggml's `hsum_float_8`: the halves added, then pairs, then the two sums.
fn hsum8(acc: [f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
    (r[0] + r[2]) + (r[1] + r[3])
}

/// ggml's AVX2 `ggml_vec_dot_q8_0_q8_0` (and tinyBLAS's Q8_0 kernel, which sums
/// alike): eight lanes of four consecutive products, one multiply-add per lane per
/// block by `d_w · d_x`, the lanes added as [`hsum8`] adds them.
#[allow(clippy::inline_always)] // into `fast`'s FMA copy, compiled with its features
#[inline(always)]
fn dot_q8_0(weights: &[Q8_0], x: &[Q8]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, y) in weights.iter().zip(x) {
        let scale = w.d * y.d;
        for (lane, a) in acc.iter_mut().enumerate() {
            let range = lane * 4..lane * 4 + 4;
            let sum: i32 = w.qs[range.clone()]
                .iter()
                .zip(&y.qs[range])
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            #[allow(clippy::cast_precision_loss)] // |sum| ≤ 4 · 128²: exact
            let sum = sum as f32;
            *a = scale.mul_add(sum, *a);
        }
    }
    hsum8(acc)
}

/// ggml's `rms_norm` then `mul` by `weight`, over the last dimension of `x`: the
/// squares summed in f64, `1 / sqrt(mean + eps)` in f32, `x · scale · w` (candle
/// sums in f32 and divides by the root, which moves the last bit of some values and
/// so, through the next layer's Q8 quantization, whole quants).
pub fn rms_norm(x: &Tensor, weight: &[f32], eps: f32) -> Result<Tensor> {
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let n = weight.len();
    let mut out = Vec::with_capacity(values.len());
    for row in values.chunks_exact(n) {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(&v, &w)| v * scale * w));
    }
    Tensor::from_vec(out, x.shape(), x.device())
}

/// ggml's RoPE in its NORM mode over `x`, `(tokens, heads, head_dim)`: each pair
/// `(2i, 2i + 1)` turned by the token's angle `i`, `cos`/`sin` being
/// `(tokens, head_dim / 2)`. GCC fuses one product of each output into a
/// multiply-add: `fma(x0, cos, -(x1 · sin))`, `fma(x0, sin, x1 · cos)` (checked
/// against llama.cpp's own RoPE output).
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let pairs = head_dim / 2;
    let per_token = x.len() / (cos.len() / pairs);
    for (token, values) in x.chunks_exact_mut(per_token).enumerate() {
        let (cos, sin) = (
            &cos[token * pairs..(token + 1) * pairs],
            &sin[token * pairs..(token + 1) * pairs],
        );
        for head in values.chunks_exact_mut(head_dim) {
            for (pair, (&c, &s)) in head
                .as_chunks_mut::<2>()
                .0
                .iter_mut()
                .zip(cos.iter().zip(sin))
            {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0.mul_add(c, -(x1 * s));
                pair[1] = x0.mul_add(s, x1 * c);
            }
        }
    }
}

/// ggml's AVX-512 `ggml_v_expf`: a polynomial, not the C library's `expf`, so that
/// softmax weights and SiLU match llama.cpp's to the bit.
#[allow(clippy::many_single_char_names)] // ggml's names
fn expf(x: f32) -> f32 {
    let magic = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), magic);
    let n = z - magic;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    // `_mm512_scalef_ps(j, n)`: j · 2ⁿ, rounded once (exact in f64, then to f32).
    #[allow(clippy::cast_possible_truncation)] // |n| ≤ 192, integral
    let scaled = f64::from(j) * 2f64.powi(n as i32);
    #[allow(clippy::cast_possible_truncation)]
    let scaled = scaled as f32;
    scaled
}

/// ggml's `swiglu`: `silu(gate) · up`, SiLU being `x / (1 + expf(-x))`.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| g / (1.0 + expf(0.0 - g)) * u)
        .collect()
}

/// `_mm512_reduce_add_ps` as GCC compiles it: halves, quarters, then pairs.
fn reduce16(v: &[f32; 16]) -> f32 {
    let t: [f32; 8] = std::array::from_fn(|i| v[i + 8] + v[i]);
    let t: [f32; 4] = std::array::from_fn(|i| t[i + 4] + t[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// An F16 dot product summed as llama.cpp sums it: `batched` (a prompt, two tokens
/// or more) by llamafile's tinyBLAS (16 lanes, one multiply-add per lane per 16
/// values), otherwise by `ggml_vec_dot_f16` (four 16-lane accumulators per 64
/// values, combined pairwise). Products of two F16 values are exact in f32, so only
/// the grouping of the sums matters. `b` may be shorter than `a` (zeros beyond).
fn dot_f16(a: impl Fn(usize) -> f32, b: &[f32], batched: bool) -> f32 {
    if batched {
        let mut lanes = [0f32; 16];
        for (i, &y) in b.iter().enumerate() {
            lanes[i % 16] = a(i).mul_add(y, lanes[i % 16]);
        }
        reduce16(&lanes)
    } else {
        let mut acc = [[0f32; 16]; 4];
        for (i, &y) in b.iter().enumerate() {
            let (j, l) = ((i % 64) / 16, i % 16);
            acc[j][l] = a(i).mul_add(y, acc[j][l]);
        }
        let lanes: [f32; 16] =
            std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
        reduce16(&lanes)
    }
}

/// One sequence's keys and values for one layer, F16 as llama.cpp's cache holds
/// them, `(position, kv_head, head_dim)`.
#[derive(Default)]
pub struct HostKv {
    k: Vec<f16>,
    v: Vec<f16>,
}

impl HostKv {
    /// Keeps the first `positions` positions' entries (`width` values each), then
    /// appends `k` and `v`, rounded to F16.
    pub fn extend(&mut self, positions: usize, width: usize, k: &[f32], v: &[f32]) {
        self.k.truncate(positions * width);
        self.v.truncate(positions * width);
        self.k.extend(k.iter().map(|&x| f16::from_f32(x)));
        self.v.extend(v.iter().map(|&x| f16::from_f32(x)));
    }
}

/// The shape of grouped-query attention.
pub struct Heads {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// llama.cpp's attention without flash attention, for `q`, `(tokens, n_head,
/// head_dim)`, the last tokens of `kv`: `K·Q` of F16 values, scaled by
/// `1/√head_dim`, causally masked, ggml's softmax (its `expf`, the sum in f64 by
/// 16-value chunks, times the reciprocal), rounded to F16, times V. Returns
/// `(tokens, n_head · head_dim)`.
pub fn attention(q: &[f32], kv: &HostKv, shape: &Heads) -> Vec<f32> {
    let Heads {
        n_head,
        n_kv_head,
        head_dim,
    } = *shape;
    let width = n_kv_head * head_dim;
    let positions = kv.k.len() / width;
    let tokens = q.len() / (n_head * head_dim);
    let batched = tokens >= 2;
    #[allow(clippy::cast_precision_loss)]
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    let rows: Vec<(usize, usize)> = (0..tokens)
        .flat_map(|t| (0..n_head).map(move |h| (t, h)))
        .collect();
    out.par_chunks_mut(head_dim)
        .zip(rows.par_iter())
        .for_each(|(out, &(t, h))| {
            let g = h / (n_head / n_kv_head);
            let row = &q[(t * n_head + h) * head_dim..][..head_dim];
            let query: Vec<f32> = row.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
            let visible = positions - tokens + t + 1;
            let key = |s: usize| &kv.k[s * width + g * head_dim..][..head_dim];
            let scores: Vec<f32> = (0..visible)
                .map(|s| dot_f16(|d| key(s)[d].to_f32(), &query, batched) * scale)
                .collect();
            let weights = softmax(&scores);
            for (d, value) in out.iter_mut().enumerate() {
                *value = dot_f16(
                    |s| kv.v[s * width + g * head_dim + d].to_f32(),
                    &weights,
                    batched,
                );
            }
        });
    out
}

/// ggml's `soft_max` of the visible scores (masked ones weigh exactly 0), rounded
/// to F16 as `V·softmax` reads them.
fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let exps: Vec<f32> = scores.iter().map(|&s| expf(s - max)).collect();
    let mut sum = 0f64;
    for chunk in exps.chunks(16) {
        let mut lanes = [0f32; 16];
        lanes[..chunk.len()].copy_from_slice(chunk);
        sum += f64::from(reduce16(&lanes));
    }
    #[allow(clippy::cast_possible_truncation)]
    let inverse = (1.0 / sum) as f32;
    exps.iter()
        .map(|&e| f16::from_f32(e * inverse).to_f32())
        .collect()
}
