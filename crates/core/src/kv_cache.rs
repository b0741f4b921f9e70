//! The KV cache of causal language models: one preallocated `[batch, kv_heads,
//! capacity, head_dim]` buffer pair per layer, written in place, so decoding a token
//! appends without reallocating; croppable (speculative/contrastive decoding) and
//! reorderable along the batch (beam search).

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// One layer's keys and values.
#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// The cache of all layers of a model.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    capacity: usize,
    /// Tokens appended by the forward pass in progress (each layer appends the same count).
    pending: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers holding up to `capacity` positions.
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            capacity,
            pending: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `k`, `v` (`[batch, kv_heads, new, head_dim]`) for `layer` and returns the
    /// keys and values of every position so far.
    pub fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, h, new, d) = k.dims4()?;
        if self.len + new > self.capacity {
            candle_core::bail!(
                "the KV cache holds {} positions and {new} more exceed its capacity of {}; \
                 the input is longer than the model's context",
                self.len,
                self.capacity
            );
        }
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no cache for layer {layer}")))?;
        if slot.is_none() {
            let zeros = || Tensor::zeros((b, h, self.capacity, d), k.dtype(), k.device());
            *slot = Some(LayerCache {
                k: zeros()?,
                v: zeros()?,
            });
        }
        let Some(c) = slot.as_mut() else {
            candle_core::bail!("cache slot missing");
        };
        if c.k.dims()[0] != b {
            candle_core::bail!(
                "cache batch is {} but the input batch is {b}",
                c.k.dims()[0]
            );
        }
        c.k.slice_set(&k.contiguous()?, 2, self.len)?;
        c.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.pending = new;
        let total = self.len + new;
        Ok((c.k.narrow(2, 0, total)?, c.v.narrow(2, 0, total)?))
    }

    /// Marks the positions appended by the forward pass as part of the cache; called by
    /// the model once all layers ran.
    pub fn commit(&mut self) {
        self.len += self.pending;
        self.pending = 0;
    }

    /// Keeps only the first `len` positions.
    pub fn crop(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::invalid(format!(
                "cannot crop a cache of {} positions to {len}",
                self.len
            )));
        }
        self.len = len;
        Ok(())
    }

    /// Reorders the batch (beam search): row `i` becomes old row `indices[i]`.
    pub fn reorder(&mut self, indices: &[u32]) -> Result<()> {
        for c in self.layers.iter_mut().flatten() {
            let idx = Tensor::new(indices, c.k.device())?;
            c.k = c.k.index_select(&idx, 0)?;
            c.v = c.v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// Empties the cache (buffers are kept for reuse).
    pub fn reset(&mut self) {
        self.len = 0;
        self.pending = 0;
    }

    /// Bytes the buffers take.
    pub fn memory_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|c| 2 * c.k.elem_count() * c.k.dtype().size_in_bytes())
            .sum()
    }
}

/// A zero-length stand-in used by callers that need a dtype and device only.
pub fn empty(dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros(0, dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_crop_reorder() {
        let dev = Device::Cpu;
        let mut c = KvCache::new(1, 4);
        let a = Tensor::arange(0f32, 4.0, &dev)
            .unwrap()
            .reshape((2, 1, 1, 2))
            .unwrap();
        let (k, _) = c.append(0, &a, &a).unwrap();
        c.commit();
        assert_eq!(k.dims(), &[2, 1, 1, 2]);
        let b = (a.clone() + 10.0).unwrap();
        let (k, v) = c.append(0, &b, &b).unwrap();
        c.commit();
        assert_eq!(c.len(), 2);
        assert_eq!(
            k.get(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![0., 1., 10., 11.]
        );
        assert_eq!(v.dims(), &[2, 1, 2, 2]);
        c.reorder(&[1, 1]).unwrap();
        let (k, _) = c.append(0, &b, &b).unwrap();
        c.commit();
        assert_eq!(
            k.get(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![2., 3., 12., 13., 10., 11.]
        );
        c.crop(1).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c.crop(5).is_err());
        // Capacity overflow is an error, not a panic.
        let big = Tensor::zeros((2, 1, 4, 2), DType::F32, &dev).unwrap();
        assert!(c.append(0, &big, &big).is_err());
    }
}
