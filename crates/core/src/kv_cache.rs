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

    /// A new cache assembled from rows of others (continuous batching: sequences join
    /// and leave a running batch). Row `i` of the result is row `rows[i].row` of
    /// `rows[i].cache`, of which the last `rows[i].keep` positions are kept and placed so
    /// that every row ends at the same position: the result holds as many positions as
    /// the longest `keep`, and shorter rows are left-padded with zeros (the caller's
    /// attention mask hides them). Every source must have run at least one forward pass.
    pub fn gather(rows: &[CacheRow<'_>], capacity: usize) -> Result<KvCache> {
        let Some(first) = rows.first() else {
            return Err(Error::invalid("a cache needs at least one row"));
        };
        let num_layers = first.cache.layers.len();
        let len = rows.iter().map(|r| r.keep).max().unwrap_or(0);
        if len > capacity {
            return Err(Error::invalid(format!(
                "{len} positions do not fit a cache of capacity {capacity}"
            )));
        }
        for r in rows {
            if r.cache.layers.len() != num_layers {
                return Err(Error::invalid(
                    "caches of different models cannot be merged",
                ));
            }
            if r.keep > r.cache.len {
                return Err(Error::invalid(format!(
                    "cannot keep {} positions of a cache holding {}",
                    r.keep, r.cache.len
                )));
            }
        }
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let mut ks = Vec::with_capacity(rows.len());
            let mut vs = Vec::with_capacity(rows.len());
            for r in rows {
                let Some(c) = r.cache.layers[l].as_ref() else {
                    return Err(Error::invalid(format!("layer {l} of a cache never ran")));
                };
                if r.row >= c.k.dims()[0] {
                    return Err(Error::invalid(format!(
                        "the cache has {} rows, no row {}",
                        c.k.dims()[0],
                        r.row
                    )));
                }
                let place = |t: &Tensor| -> candle_core::Result<Tensor> {
                    let (_, h, _, d) = t.dims4()?;
                    let src = t
                        .narrow(0, r.row, 1)?
                        .narrow(2, r.cache.len - r.keep, r.keep)?
                        .contiguous()?;
                    let dst = Tensor::zeros((1, h, capacity, d), t.dtype(), t.device())?;
                    dst.slice_set(&src, 2, len - r.keep)?;
                    Ok(dst)
                };
                ks.push(place(&c.k)?);
                vs.push(place(&c.v)?);
            }
            layers.push(Some(LayerCache {
                k: Tensor::cat(&ks, 0)?,
                v: Tensor::cat(&vs, 0)?,
            }));
        }
        Ok(KvCache {
            layers,
            len,
            capacity,
            pending: 0,
        })
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

/// One row of a [`KvCache::gather`]: row `row` of `cache`, its last `keep` positions.
#[derive(Debug, Clone, Copy)]
pub struct CacheRow<'a> {
    pub cache: &'a KvCache,
    pub row: usize,
    pub keep: usize,
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

    fn positions(c: &KvCache, row: usize) -> Vec<f32> {
        let k = c.layers[0]
            .as_ref()
            .unwrap()
            .k
            .narrow(2, 0, c.len())
            .unwrap();
        k.get(row)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn gather_aligns_rows_at_the_end() {
        let dev = Device::Cpu;
        // Cache a: 2 rows, 3 positions; cache b: 1 row, 1 position. One head, dim 1.
        let mut a = KvCache::new(1, 8);
        let x = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev)
            .unwrap()
            .reshape((2, 1, 3, 1))
            .unwrap();
        a.append(0, &x, &x).unwrap();
        a.commit();
        let mut b = KvCache::new(1, 2);
        let y = Tensor::new(&[9f32], &dev)
            .unwrap()
            .reshape((1, 1, 1, 1))
            .unwrap();
        b.append(0, &y, &y).unwrap();
        b.commit();
        let rows = [
            CacheRow {
                cache: &b,
                row: 0,
                keep: 1,
            },
            CacheRow {
                cache: &a,
                row: 1,
                keep: 2,
            },
            CacheRow {
                cache: &a,
                row: 0,
                keep: 3,
            },
        ];
        let mut g = KvCache::gather(&rows, 5).unwrap();
        assert_eq!((g.len(), g.capacity()), (3, 5));
        assert_eq!(positions(&g, 0), vec![0., 0., 9.]);
        assert_eq!(positions(&g, 1), vec![0., 5., 6.]);
        assert_eq!(positions(&g, 2), vec![1., 2., 3.]);
        // It appends like any cache, up to its capacity.
        let z = Tensor::zeros((3, 1, 2, 1), DType::F32, &dev).unwrap();
        g.append(0, &z, &z).unwrap();
        g.commit();
        assert!(g.append(0, &z, &z).is_err());
        // Bad requests are errors.
        assert!(KvCache::gather(&[], 4).is_err());
        assert!(KvCache::gather(
            &[CacheRow {
                cache: &a,
                row: 2,
                keep: 1
            }],
            4
        )
        .is_err());
        assert!(KvCache::gather(
            &[CacheRow {
                cache: &a,
                row: 0,
                keep: 4
            }],
            8
        )
        .is_err());
        assert!(KvCache::gather(
            &[CacheRow {
                cache: &a,
                row: 0,
                keep: 3
            }],
            2
        )
        .is_err());
        let empty = KvCache::new(1, 4);
        assert!(KvCache::gather(
            &[CacheRow {
                cache: &empty,
                row: 0,
                keep: 0
            }],
            4
        )
        .is_err());
    }
}
