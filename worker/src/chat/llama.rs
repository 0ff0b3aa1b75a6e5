//! The llama architecture over GGUF weights, computed on the CPU as llama.cpp's CPU
//! backend computes it, to the bit, so that greedy answers are llama.cpp's.
//!
//! Adapted from candle-transformers' `quantized_llama` (MIT OR Apache-2.0), which
//! this replaces because a 135M model at Q4_1 is chaotic at the last bit: its top two
//! logits are often a few hundredths apart, and any rounding that differs from
//! llama.cpp's (how activations are quantized to Q8, how a norm or a softmax sums,
//! an `expf` polynomial, a multiply-add fused or not) flips an integer quant
//! somewhere in 30 layers, which moves logits by ~0.1 and flips greedy choices
//! within a few tokens. On the CPU every operation here is [`ggml`]'s:
//!
//! - **Matrix products** quantize activations as ggml's x86 code does and sum in its
//!   order ([`ggml::Matrix`]).
//! - **RMSNorm, RoPE, SwiGLU, softmax** are ggml's CPU kernels (f64 sums, fused
//!   multiply-adds, its AVX-512 `expf`), RoPE angles by llama.cpp's recurrence.
//! - **Attention** reads an F16 KV cache as llama.cpp does without flash attention
//!   (its default in llama-cpp-python): queries and softmax rounded to F16, dot
//!   products summed by tinyBLAS for a prompt, by `ggml_vec_dot_f16` for one token.
//!
//! That is llama.cpp built for an x86-64 CPU with AVX-512 (as `pip install
//! llama-cpp-python` builds it on such a machine); its AVX2-only build uses another
//! `expf`, and answers may part from it. On other devices (the `cuda` feature)
//! candle's operations run instead, with the same F16 cache and RoPE angles.
//! **Weights and caches are apart**: one copy of the weights serves every sequence,
//! each with its own [`KvCache`].
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};

use super::ggml::{self, HostKv};

/// The most positions a sequence may hold (candle's `quantized_llama` limit too).
pub const MAX_SEQ_LEN: usize = 4096;

struct Layer {
    attention_norm: Norm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Norm,
    gate: Linear,
    down: Linear,
    up: Linear,
}

/// A weight matrix: ggml's arithmetic on the CPU where its type allows
/// ([`ggml::Matrix`]: Q4_1, Q8_0), candle's otherwise (other types, other devices).
enum Linear {
    Ggml(ggml::Matrix),
    Candle(QMatMul),
}

impl Linear {
    fn new(tensor: QTensor, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            if let Some(matrix) = ggml::Matrix::from_qtensor(&tensor)? {
                return Ok(Self::Ggml(matrix));
            }
        }
        Ok(Self::Candle(QMatMul::from_qtensor(tensor)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Ggml(matrix) => matrix.forward(x),
            Self::Candle(matmul) => matmul.forward(x),
        }
    }
}

/// An RMSNorm weight, kept on the host too for ggml's CPU arithmetic.
struct Norm {
    weight: Tensor,
    host: Vec<f32>,
}

impl Norm {
    fn new(tensor: QTensor, device: &Device) -> Result<Self> {
        let weight = tensor.dequantize(device)?;
        let host = weight.to_vec1()?;
        Ok(Self { weight, host })
    }

    fn forward(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        if x.device().is_cpu() {
            ggml::rms_norm(x, &self.host, eps)
        } else {
            candle_nn::ops::rms_norm(x, &self.weight, eps)
        }
    }
}

/// A llama-family model's weights, shared by every sequence.
pub struct Llama {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    output: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    eps: f32,
    /// cos and sin of each position's angles, `(MAX_SEQ_LEN, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
}

/// One sequence's keys and values, per layer, in F16: on the host for the CPU's
/// arithmetic, as tensors on other devices.
#[derive(Default)]
pub struct KvCache {
    host: Vec<HostKv>,
    layers: Vec<(Tensor, Tensor)>,
}

/// llama.cpp's RoPE table (`ggml_rope_cache_init`, no scaling): for each position
/// `p`, θ starts at `p` and is multiplied by `base^(-2/d)` from one pair to the next.
fn rope_tables(head_dim: usize, freq_base: f32, device: &Device) -> Result<(Tensor, Tensor)> {
    let pairs = head_dim / 2;
    #[allow(clippy::cast_precision_loss)]
    let theta_scale = freq_base.powf(-2.0 / head_dim as f32);
    let mut cos = Vec::with_capacity(MAX_SEQ_LEN * pairs);
    let mut sin = Vec::with_capacity(MAX_SEQ_LEN * pairs);
    for position in 0..MAX_SEQ_LEN {
        #[allow(clippy::cast_precision_loss)]
        let mut theta = position as f32;
        for _ in 0..pairs {
            cos.push(theta.cos());
            sin.push(theta.sin());
            theta *= theta_scale;
        }
    }
    Ok((
        Tensor::from_vec(cos, (MAX_SEQ_LEN, pairs), device)?,
        Tensor::from_vec(sin, (MAX_SEQ_LEN, pairs), device)?,
    ))
}

/// Rounds to F16 and back: what llama.cpp's F16 operands hold.
fn f16(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

impl Llama {
    /// Reads the weights of a GGUF file of architecture `llama`.
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let get = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| candle_core::Error::Msg(format!("no `{key}` in the GGUF metadata")))
        };
        let n_head = get("llama.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = get("llama.attention.head_count_kv")?.to_u32()? as usize;
        let blocks = get("llama.block_count")?.to_u32()? as usize;
        let embedding = get("llama.embedding_length")?.to_u32()? as usize;
        let eps = get("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let freq_base = get("llama.rope.freq_base")
            .and_then(gguf_file::Value::to_f32)
            .unwrap_or(10_000.0);
        let head_dim = embedding / n_head;
        let tensor = |reader: &mut R, name: &str| content.tensor(reader, name, device);

        let token_embd = tensor(reader, "token_embd.weight")?;
        let embeddings = token_embd.dequantize(device)?;
        // Tied embeddings (SmolLM2) when there is no output matrix.
        let output = match tensor(reader, "output.weight") {
            Ok(output) => output,
            Err(_) => token_embd,
        };
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut matmul = |name: &str| -> Result<Linear> {
                Linear::new(tensor(reader, &format!("blk.{i}.{name}.weight"))?, device)
            };
            let (wq, wk, wv, wo) = (
                matmul("attn_q")?,
                matmul("attn_k")?,
                matmul("attn_v")?,
                matmul("attn_output")?,
            );
            let (gate, down, up) = (matmul("ffn_gate")?, matmul("ffn_down")?, matmul("ffn_up")?);
            layers.push(Layer {
                attention_norm: Norm::new(
                    tensor(reader, &format!("blk.{i}.attn_norm.weight"))?,
                    device,
                )?,
                wq,
                wk,
                wv,
                wo,
                ffn_norm: Norm::new(tensor(reader, &format!("blk.{i}.ffn_norm.weight"))?, device)?,
                gate,
                down,
                up,
            });
        }
        let (cos, sin) = rope_tables(head_dim, freq_base, device)?;
        Ok(Self {
            embeddings,
            layers,
            norm: Norm::new(tensor(reader, "output_norm.weight")?, device)?,
            output: Linear::new(output, device)?,
            n_head,
            n_kv_head,
            head_dim,
            eps,
            cos,
            sin,
        })
    }

    /// Reads `tokens` at positions `position..` into `cache` and returns the logits
    /// after the last one.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], position: usize) -> Result<Tensor> {
        let n = tokens.len();
        if position + n > MAX_SEQ_LEN {
            candle_core::bail!("{} positions: at most {MAX_SEQ_LEN}", position + n);
        }
        let ids = Tensor::new(tokens, self.embeddings.device())?;
        let mut x = self.embeddings.index_select(&ids, 0)?.unsqueeze(0)?; // (1, n, embedding)
        let span = self.span(position, n)?;
        let host = x.device().is_cpu();
        if host {
            cache.host.resize_with(self.layers.len(), HostKv::default);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let attended = if host {
                self.attention_host(layer, &x, &span, &mut cache.host[i], position)?
            } else {
                self.attention(layer, &x, &span, cache.layer(i, position))?
            };
            x = (attended + x)?;
            x = (self.feed_forward(layer, &x)? + x)?;
        }
        let last = x.i((.., n - 1, ..))?;
        let last = self.norm.forward(&last, self.eps)?;
        self.output.forward(&last)?.squeeze(0)
    }

    /// The angles and mask for `n` new tokens from `position`.
    fn span(&self, position: usize, n: usize) -> Result<Span> {
        Ok(Span {
            n,
            cos: self.cos.narrow(0, position, n)?,
            sin: self.sin.narrow(0, position, n)?,
            mask: causal_mask(position, n, self.embeddings.device())?,
        })
    }

    /// One layer's attention over `x` (the new tokens) and the cached positions,
    /// whose keys and values it extends: the output projection, before the residual.
    #[allow(clippy::many_single_char_names)] // q, k, v, x, h: the architecture's names
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        span: &Span,
        cache: LayerCache,
    ) -> Result<Tensor> {
        let n = span.n;
        let h = layer.attention_norm.forward(x, self.eps)?;
        let heads = |t: Tensor, count: usize| {
            t.reshape((1, n, count, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(layer.wq.forward(&h)?, self.n_head)?;
        let k = heads(layer.wk.forward(&h)?, self.n_kv_head)?;
        let v = heads(layer.wv.forward(&h)?, self.n_kv_head)?;
        let q = candle_nn::rotary_emb::rope_i(&q, &span.cos, &span.sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, &span.cos, &span.sin)?.to_dtype(DType::F16)?;
        let v = v.to_dtype(DType::F16)?;
        let (k, v) = cache.extend(k, v)?;
        // Grouped heads: each key/value head serves `repeats` query heads.
        let repeats = self.n_head / self.n_kv_head;
        let kv_len = k.dim(2)?;
        let q = f16(&q)?.reshape((self.n_kv_head, repeats * n, self.head_dim))?;
        let k = k
            .to_dtype(DType::F32)?
            .reshape((self.n_kv_head, kv_len, self.head_dim))?;
        let v = v
            .to_dtype(DType::F32)?
            .reshape((self.n_kv_head, kv_len, self.head_dim))?;
        #[allow(clippy::cast_precision_loss)]
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.reshape((self.n_kv_head, repeats, n, kv_len))?;
        let scores = match &span.mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = f16(&candle_nn::ops::softmax_last_dim(&scores)?)?.reshape((
            self.n_kv_head,
            repeats * n,
            kv_len,
        ))?;
        let attended = weights
            .matmul(&v)? // (kv_head, repeats * n, head_dim)
            .reshape((1, self.n_head, n, self.head_dim))?
            .transpose(1, 2)?
            .reshape((1, n, self.n_head * self.head_dim))?;
        layer.wo.forward(&attended)
    }

    /// [`Self::attention`] on the CPU, in ggml's arithmetic throughout: `cache` is
    /// the layer's host KV cache.
    #[allow(clippy::many_single_char_names)] // q, k, v, x, h: the architecture's names
    fn attention_host(
        &self,
        layer: &Layer,
        x: &Tensor,
        span: &Span,
        cache: &mut HostKv,
        position: usize,
    ) -> Result<Tensor> {
        let h = layer.attention_norm.forward(x, self.eps)?;
        let host = |t: Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
        let mut q = host(layer.wq.forward(&h)?)?;
        let mut k = host(layer.wk.forward(&h)?)?;
        let v = host(layer.wv.forward(&h)?)?;
        let cos = host(span.cos.clone())?;
        let sin = host(span.sin.clone())?;
        ggml::rope(&mut q, self.head_dim, &cos, &sin);
        ggml::rope(&mut k, self.head_dim, &cos, &sin);
        cache.extend(position, self.n_kv_head * self.head_dim, &k, &v);
        let heads = ggml::Heads {
            n_head: self.n_head,
            n_kv_head: self.n_kv_head,
            head_dim: self.head_dim,
        };
        let attended = ggml::attention(&q, cache, &heads);
        let attended = Tensor::from_vec(
            attended,
            (1, span.n, self.n_head * self.head_dim),
            x.device(),
        )?;
        layer.wo.forward(&attended)
    }

    /// One layer's SwiGLU feed-forward network over `x`, before the residual.
    fn feed_forward(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let h = layer.ffn_norm.forward(x, self.eps)?;
        let (gate, up) = (layer.gate.forward(&h)?, layer.up.forward(&h)?);
        let gated = if x.device().is_cpu() {
            let gated = ggml::swiglu(
                &gate.flatten_all()?.to_vec1()?,
                &up.flatten_all()?.to_vec1()?,
            );
            Tensor::from_vec(gated, gate.shape(), x.device())?
        } else {
            (candle_nn::ops::silu(&gate)? * up)?
        };
        layer.down.forward(&gated)
    }
}

/// The `n` new tokens of a forward pass from `position`: their RoPE angles and,
/// when there are several, the causal mask among them.
struct Span {
    n: usize,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

/// A causal mask over `n` new tokens from `position` (earlier positions are all
/// visible); none for one token.
fn causal_mask(position: usize, n: usize, device: &Device) -> Result<Option<Tensor>> {
    if n <= 1 {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..position + n).map(move |j| {
                if j > position + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (n, position + n), device)?))
}

/// One layer's slot in a [`KvCache`], for a pass starting at `position`.
struct LayerCache<'a> {
    cache: &'a mut KvCache,
    layer: usize,
    position: usize,
}

impl KvCache {
    fn layer(&mut self, layer: usize, position: usize) -> LayerCache<'_> {
        LayerCache {
            cache: self,
            layer,
            position,
        }
    }
}

impl LayerCache<'_> {
    /// The layer's keys and values with `k` and `v` (the new positions') after the
    /// cached ones, kept for the next pass; a pass from position 0 starts afresh.
    fn extend(self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let layers = &mut self.cache.layers;
        let (k, v) = match layers.get(self.layer) {
            Some((k_past, v_past)) if self.position > 0 => (
                Tensor::cat(&[k_past, &k], 2)?,
                Tensor::cat(&[v_past, &v], 2)?,
            ),
            _ => (k, v),
        };
        if layers.len() > self.layer {
            layers[self.layer] = (k.clone(), v.clone());
        } else {
            layers.push((k.clone(), v.clone()));
        }
        Ok((k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_angles_follow_llama_cpps_recurrence() -> Result<()> {
        let (cos, sin) = rope_tables(4, 10_000.0, &Device::Cpu)?;
        let cos: Vec<Vec<f32>> = cos.to_vec2()?;
        let sin: Vec<Vec<f32>> = sin.to_vec2()?;
        assert_eq!(cos[0], [1.0, 1.0]);
        assert_eq!(sin[3][0], 3f32.sin());
        assert_eq!(sin[3][1], (3f32 * 0.01).sin());
        Ok(())
    }
}
