//! Neural-network ops: convolutions, Gemm/MatMul, pooling, normalization (BatchNorm, InstanceNorm, LayerNorm,
//! LRN) and Dropout. Padding follows ONNX (`pads` as begin…end, `auto_pad`); asymmetric pads are applied
//! explicitly before the libtorch kernel, which only knows symmetric padding.

use tch::{Kind, Tensor};

use super::{axis, one, OpCtx, OpError, OpFn, OpResult};

pub const OPS: &[(&str, OpFn)] = &[
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("Gemm", gemm),
    ("MatMul", |c, i| {
        one(c.input(i, 0)?.f_matmul(c.input(i, 1)?)?)
    }),
    ("MaxPool", max_pool),
    ("AveragePool", average_pool),
    ("GlobalAveragePool", |c, i| global_pool(c, i, false)),
    ("GlobalMaxPool", |c, i| global_pool(c, i, true)),
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", instance_norm),
    ("LayerNormalization", layer_norm),
    ("LRN", lrn),
    ("Dropout", dropout),
];

/// Spatial geometry shared by convolutions and pools.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads_begin: Vec<i64>,
    pads_end: Vec<i64>,
}

impl Window {
    /// Reads `kernel_shape` (or `default_kernel`), `strides`, `dilations`, `pads`/`auto_pad` for input `x`.
    fn read(c: &OpCtx, x: &Tensor, default_kernel: Option<Vec<i64>>) -> Result<Self, OpError> {
        let n = x.dim().checked_sub(2).filter(|&n| n > 0).ok_or_else(|| {
            OpError::Invalid(format!(
                "input of rank {} has no spatial dimensions",
                x.dim()
            ))
        })?;
        let kernel = c
            .attr::<Vec<i64>>("kernel_shape")?
            .or(default_kernel)
            .ok_or_else(|| OpError::Invalid("attribute `kernel_shape` is required".into()))?;
        let strides = c.attr_or("strides", vec![1; n])?;
        let dilations = c.attr_or("dilations", vec![1; n])?;
        check_geometry(n, &kernel, &strides, &dilations)?;
        let auto_pad = c.attr_or("auto_pad", "NOTSET".to_owned())?;
        let spatial = &x.size()[2..];
        let (pads_begin, pads_end) = match auto_pad.as_str() {
            "NOTSET" => {
                let pads = c.attr_or("pads", vec![0; 2 * n])?;
                if pads.len() != 2 * n {
                    return Err(OpError::Invalid(format!(
                        "pads {pads:?} should have {} values",
                        2 * n
                    )));
                }
                (pads[..n].to_vec(), pads[n..].to_vec())
            }
            "VALID" => (vec![0; n], vec![0; n]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut b = Vec::with_capacity(n);
                let mut e = Vec::with_capacity(n);
                for d in 0..n {
                    let out = (spatial[d] + strides[d] - 1) / strides[d];
                    let total = ((out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1
                        - spatial[d])
                        .max(0);
                    let small = total / 2;
                    if auto_pad == "SAME_UPPER" {
                        b.push(small);
                        e.push(total - small);
                    } else {
                        b.push(total - small);
                        e.push(small);
                    }
                }
                (b, e)
            }
            other => return Err(OpError::Invalid(format!("auto_pad `{other}` is not valid"))),
        };
        Ok(Self {
            kernel,
            strides,
            dilations,
            pads_begin,
            pads_end,
        })
    }

    fn symmetric(&self) -> bool {
        self.pads_begin == self.pads_end
    }

    /// Pads `x` explicitly with `value` (`[begin, end]` per spatial dim), returning the padded tensor.
    fn pad_explicitly(&self, x: &Tensor, value: f64) -> Result<Tensor, tch::TchError> {
        x.f_pad(
            torch_pad_list(&self.pads_begin, &self.pads_end),
            "constant",
            value,
        )
    }
}

/// Kernel sizes, strides and dilations: one per spatial dim, each at least 1 (a zero stride would divide by zero
/// in the output-size arithmetic).
fn check_geometry(
    n: usize,
    kernel: &[i64],
    strides: &[i64],
    dilations: &[i64],
) -> Result<(), OpError> {
    if kernel.len() != n || strides.len() != n || dilations.len() != n {
        return Err(OpError::Invalid(format!(
            "kernel_shape {kernel:?}, strides {strides:?}, dilations {dilations:?} do not match {n} spatial dims"
        )));
    }
    if [kernel, strides, dilations]
        .iter()
        .any(|v| v.iter().any(|&d| d < 1))
    {
        return Err(OpError::Invalid(format!(
            "kernel_shape {kernel:?}, strides {strides:?} and dilations {dilations:?} must all be at least 1"
        )));
    }
    Ok(())
}

/// The weight of a convolution: `[out, in / group, k1, k2, …]`, at least rank 3.
fn conv_weight<'t>(w: &'t Tensor, op: &str) -> Result<&'t Tensor, OpError> {
    if w.dim() < 3 {
        return Err(OpError::Invalid(format!(
            "{op} weight has shape {:?}; expected [out, in/group, kernel...] (rank 3 or more)",
            w.size()
        )));
    }
    Ok(w)
}

/// ONNX `[b1, b2, …, e1, e2, …]` → torch `[b_last, e_last, …, b_first, e_first]`.
pub fn torch_pad_list(begin: &[i64], end: &[i64]) -> Vec<i64> {
    begin
        .iter()
        .zip(end)
        .rev()
        .flat_map(|(&b, &e)| [b, e])
        .collect()
}

pub(super) fn conv(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, w, b) = (
        c.input(i, 0)?,
        conv_weight(c.input(i, 1)?, "Conv")?,
        c.opt(i, 2),
    );
    let win = Window::read(c, x, Some(w.size()[2..].to_vec()))?;
    let group = c.attr_or("group", 1i64)?;
    if let Some(y) = patch_linear(x, w, b, &win, group)? {
        return one(y);
    }
    let n = win.kernel.len();
    let (x, pad) = if win.symmetric() {
        (x.shallow_clone(), win.pads_begin.clone())
    } else {
        (win.pad_explicitly(x, 0.0)?, vec![0; n])
    };
    one(x.f_convolution(
        w,
        b,
        &win.strides,
        &pad,
        &win.dilations,
        false,
        vec![0; n],
        group,
    )?)
}

/// The smallest kernel (in positions) [`patch_linear`] takes: at 2x2 a strided convolution is as fast or faster.
const PATCH_LINEAR_MIN_POSITIONS: i64 = 16;

/// A 2-D convolution whose kernel tiles its input (strides equal to the kernel, no padding, no dilation, one
/// group: a ViT's patch embedding, a ConvNeXt or Swin stem) computed as what it is, one matrix product of the
/// flattened patches with the flattened kernel. oneDNN's strided convolution backward is slow for these shapes:
/// forward + input-gradient of a 7x7/7 patch embedding of 200 28x28 images took 6.1–6.7 ms as a convolution
/// (either layout) and 0.7–0.8 ms as a GEMM; 4x4/4 to 192 channels on 128 CIFAR images 6.8–20.8 vs 2.7–6.0 ms;
/// 16x16/16 to 768 channels on 16 224x224 images 148–156 vs 55 ms (PyTorch 2.11, 2 threads). 2x2/2 kernels were
/// as fast or faster as convolutions, so they stay convolutions. The rows and columns a kernel does not cover
/// (an input not a multiple of the kernel) are dropped, as ONNX's output size says. CPU only: that is where it was
/// measured. `None` when the convolution is not such a tiling.
fn patch_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    win: &Window,
    group: i64,
) -> Result<Option<Tensor>, OpError> {
    let (size, kernel_size) = (x.size(), w.size());
    let tiles = x.device() == tch::Device::Cpu
        && size.len() == 4
        && kernel_size.len() == 4
        && group == 1
        && kernel_size[1] == size[1]
        && win.kernel == kernel_size[2..]
        && win.strides == win.kernel
        && win.dilations.iter().all(|&d| d == 1)
        && win.pads_begin.iter().chain(&win.pads_end).all(|&p| p == 0)
        && win.kernel.iter().product::<i64>() >= PATCH_LINEAR_MIN_POSITIONS
        && size[2] >= win.kernel[0]
        && size[3] >= win.kernel[1];
    if !tiles {
        return Ok(None);
    }
    let (n, c, d) = (size[0], size[1], kernel_size[0]);
    let (kh, kw) = (win.kernel[0], win.kernel[1]);
    let (gh, gw) = (size[2] / kh, size[3] / kw);
    let x = x.f_narrow(2, 0, gh * kh)?.f_narrow(3, 0, gw * kw)?;
    // Flatten each patch in the order the kernel is stored, so that only the patches are copied: (kh, kw, c) for
    // the channels-last kernels the interpreter keeps on CPU, (c, kh, kw) otherwise.
    let w_last = w.f_permute([0, 2, 3, 1])?;
    let (patches, kernel) = if w_last.is_contiguous() {
        (
            x.f_permute([0, 2, 3, 1])?
                .f_reshape([n, gh, kh, gw, kw, c])?
                .f_permute([0, 1, 3, 2, 4, 5])?
                .f_reshape([n, gh * gw, kh * kw * c])?,
            w_last.f_reshape([d, kh * kw * c])?,
        )
    } else {
        (
            x.f_reshape([n, c, gh, kh, gw, kw])?
                .f_permute([0, 2, 4, 1, 3, 5])?
                .f_reshape([n, gh * gw, c * kh * kw])?,
            w.f_reshape([d, c * kh * kw])?,
        )
    };
    // [N, patches, D] read as [N, D, gh, gw] is a channels-last view: no copy on the way out either.
    let y = patches
        .f_linear(&kernel, b)?
        .f_permute([0, 2, 1])?
        .f_reshape([n, d, gh, gw])?;
    Ok(Some(y))
}

fn conv_transpose(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, w, b) = (
        c.input(i, 0)?,
        conv_weight(c.input(i, 1)?, "ConvTranspose")?,
        c.opt(i, 2),
    );
    let n = x.dim().checked_sub(2).filter(|&n| n > 0).ok_or_else(|| {
        OpError::Invalid(format!(
            "input of rank {} has no spatial dimensions",
            x.dim()
        ))
    })?;
    let kernel = c.attr_or("kernel_shape", w.size()[2..].to_vec())?;
    let strides = c.attr_or("strides", vec![1; n])?;
    let dilations = c.attr_or("dilations", vec![1; n])?;
    check_geometry(n, &kernel, &strides, &dilations)?;
    let group = c.attr_or("group", 1i64)?;
    let mut output_padding = c.attr_or("output_padding", vec![0; n])?;
    if output_padding.len() != n {
        return Err(OpError::Invalid(format!(
            "output_padding {output_padding:?} should have {n} values"
        )));
    }
    let spatial = x.size()[2..].to_vec();
    // Full (unpadded) output length per dim; pads are then cropped from it.
    let full_len = |d: usize, op: &[i64]| {
        strides[d]
            .saturating_mul(spatial[d] - 1)
            .saturating_add(op[d])
            .saturating_add((kernel[d] - 1).saturating_mul(dilations[d]))
            .saturating_add(1)
    };
    let mut out_shape = vec![x.size()[0], w.size()[1].saturating_mul(group)];
    out_shape.extend((0..n).map(|d| full_len(d, &output_padding)));
    c.check_shape("the output", &out_shape)?;
    let auto_pad = c.attr_or("auto_pad", "NOTSET".to_owned())?;
    let split = |total: i64| {
        if auto_pad == "SAME_UPPER" {
            (total / 2, total - total / 2)
        } else {
            (total - total / 2, total / 2)
        }
    };
    let (begin, end): (Vec<i64>, Vec<i64>) =
        if let Some(out) = c.attr::<Vec<i64>>("output_shape")? {
            if out.len() < n {
                return Err(OpError::Invalid(format!(
                    "output_shape {out:?} should have at least {n} values"
                )));
            }
            let out = out[out.len() - n..].to_vec();
            let mut pads = Vec::with_capacity(n);
            for d in 0..n {
                let total = full_len(d, &output_padding) - out[d];
                // A larger requested output than the kernel reaches: extra trailing rows (bias only).
                if total < 0 {
                    output_padding[d] -= total;
                }
                pads.push(split(total.max(0)));
            }
            pads.into_iter().unzip()
        } else if auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER" {
            (0..n)
                .map(|d| split((full_len(d, &output_padding) - spatial[d] * strides[d]).max(0)))
                .unzip()
        } else if auto_pad == "VALID" {
            (vec![0; n], vec![0; n])
        } else {
            let pads = c.attr_or("pads", vec![0; 2 * n])?;
            if pads.len() != 2 * n {
                return Err(OpError::Invalid(format!(
                    "pads {pads:?} should have {} values",
                    2 * n
                )));
            }
            (pads[..n].to_vec(), pads[n..].to_vec())
        };
    let mut y = x.f_convolution(
        w,
        b,
        &strides,
        vec![0; n],
        &dilations,
        true,
        &output_padding,
        group,
    )?;
    for d in 0..n {
        let len = full_len(d, &output_padding) - begin[d] - end[d];
        y = y.f_narrow(2 + d as i64, begin[d], len)?;
    }
    one(y)
}

/// Y = alpha * A' B' + beta * C. The common Linear case (alpha = beta = 1, B transposed) goes through
/// `linear`, the kernel PyTorch's nn.Linear uses.
pub(super) fn gemm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (a, b, bias) = (c.input(i, 0)?, c.input(i, 1)?, c.opt(i, 2));
    let alpha = c.attr_or("alpha", 1.0f32)? as f64;
    let beta = c.attr_or("beta", 1.0f32)? as f64;
    let trans_a = c.attr_or("transA", 0i64)? != 0;
    let trans_b = c.attr_or("transB", 0i64)? != 0;
    if alpha == 1.0 && beta == 1.0 && !trans_a && trans_b {
        return one(a.f_linear(b, bias)?);
    }
    let a = if trans_a {
        a.f_transpose(0, 1)?
    } else {
        a.shallow_clone()
    };
    let b = if trans_b {
        b.f_transpose(0, 1)?
    } else {
        b.shallow_clone()
    };
    let mut y = a.f_mm(&b)?;
    if alpha != 1.0 {
        y = y.f_mul_scalar(alpha)?;
    }
    if let Some(bias) = bias {
        y = if beta == 1.0 {
            y.f_add(bias)?
        } else {
            y.f_add(&bias.f_mul_scalar(beta)?)?
        };
    }
    one(y)
}

fn max_pool(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let win = Window::read(c, x, None)?;
    let ceil = c.attr_or("ceil_mode", 0i64)? != 0;
    let n = win.kernel.len();
    let torch_ok = win.symmetric()
        && win
            .pads_begin
            .iter()
            .zip(&win.kernel)
            .all(|(&p, &k)| 2 * p <= k);
    let wants_indices = c.node.outputs.get(1).is_some_and(|o| !o.is_empty());
    if wants_indices {
        if !(torch_ok && n == 2) {
            return Err(OpError::Invalid(
                "the Indices output of MaxPool is supported for 2-D pooling with symmetric pads only".into(),
            ));
        }
        let column_major = c.attr_or("storage_order", 0i64)? != 0;
        return max_pool2d_with_onnx_indices(x, &win, ceil, column_major);
    }
    let (x, pad) = if torch_ok {
        (x.shallow_clone(), win.pads_begin.clone())
    } else {
        (win.pad_explicitly(x, f64::NEG_INFINITY)?, vec![0; n])
    };
    let (k, s, d) = (&win.kernel, &win.strides, &win.dilations);
    let y = match n {
        1 => x.f_max_pool1d(k, s, &pad, d, ceil)?,
        2 => x.f_max_pool2d(k, s, &pad, d, ceil)?,
        3 => x.f_max_pool3d(k, s, &pad, d, ceil)?,
        _ => return Err(OpError::Invalid(format!("{n}-D pooling is not supported"))),
    };
    one(y)
}

/// MaxPool's Indices output: libtorch gives `h * W + w` within each (n, c) plane; ONNX flattens over the whole
/// tensor, row-major (`storage_order = 0`) or column-major within the plane (`1`).
fn max_pool2d_with_onnx_indices(
    x: &Tensor,
    win: &Window,
    ceil: bool,
    column_major: bool,
) -> OpResult {
    let (y, idx) = x.f_max_pool2d_with_indices(
        &win.kernel,
        &win.strides,
        &win.pads_begin,
        &win.dilations,
        ceil,
    )?;
    let size = x.size();
    let (c, h, w) = (size[1], size[2], size[3]);
    let plane = if column_major {
        let (row, col) = (idx.f_div_scalar_mode(w, "floor")?, idx.f_remainder(w)?);
        col.f_mul_scalar(h)?.f_add(&row)?
    } else {
        idx
    };
    let planes =
        Tensor::f_arange(size[0] * c, (Kind::Int64, x.device()))?.f_reshape([size[0], c, 1, 1])?;
    let offsets = planes.f_mul_scalar(h * w)?;
    Ok(vec![y, plane.f_add(&offsets)?])
}

fn avg_pool_nd(
    x: &Tensor,
    win: &Window,
    pad: &[i64],
    ceil: bool,
    include_pad: bool,
) -> Result<Tensor, OpError> {
    let (k, s) = (&win.kernel, &win.strides);
    Ok(match k.len() {
        1 => x.f_avg_pool1d(k, s, pad, ceil, include_pad)?,
        2 => x.f_avg_pool2d(k, s, pad, ceil, include_pad, None::<i64>)?,
        3 => x.f_avg_pool3d(k, s, pad, ceil, include_pad, None::<i64>)?,
        n => return Err(OpError::Invalid(format!("{n}-D pooling is not supported"))),
    })
}

fn average_pool(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let win = Window::read(c, x, None)?;
    let ceil = c.attr_or("ceil_mode", 0i64)? != 0;
    let include_pad = c.attr_or("count_include_pad", 0i64)? != 0;
    let torch_ok = win.symmetric()
        && win.dilations.iter().all(|&d| d == 1)
        && win
            .pads_begin
            .iter()
            .zip(&win.kernel)
            .all(|(&p, &k)| 2 * p <= k);
    if torch_ok {
        return one(avg_pool_nd(x, &win, &win.pads_begin, ceil, include_pad)?);
    }
    one(avg_pool_by_conv(x, &win, ceil, include_pad)?)
}

/// Average pooling for what libtorch's kernels cannot express (dilations, asymmetric or large pads): window sums
/// by a depthwise convolution with a ones kernel, divided by the count of counted elements in each window (real
/// inputs, plus the explicit pads when `count_include_pad`; never the overhang `ceil_mode` adds).
fn avg_pool_by_conv(
    x: &Tensor,
    win: &Window,
    ceil: bool,
    include_pad: bool,
) -> Result<Tensor, OpError> {
    let n = win.kernel.len();
    let spatial = x.size()[2..].to_vec();
    let mut overhang = vec![0i64; n];
    for d in 0..n {
        let padded = spatial[d] + win.pads_begin[d] + win.pads_end[d];
        let reach = (win.kernel[d] - 1) * win.dilations[d] + 1;
        let span = padded - reach;
        let mut out = if ceil {
            (span + win.strides[d] - 1) / win.strides[d]
        } else {
            span / win.strides[d]
        } + 1;
        // The last window must start inside the input or its left padding.
        if ceil && (out - 1) * win.strides[d] >= spatial[d] + win.pads_begin[d] {
            out -= 1;
        }
        overhang[d] = ((out - 1) * win.strides[d] + reach - padded).max(0);
    }
    let end_with_overhang: Vec<i64> = win
        .pads_end
        .iter()
        .zip(&overhang)
        .map(|(e, o)| e + o)
        .collect();
    let pad_all = |t: &Tensor, end: &[i64], value: f64| {
        t.f_pad(torch_pad_list(&win.pads_begin, end), "constant", value)
    };
    let channels = x.size()[1];
    let mut kshape = vec![channels, 1];
    kshape.extend(&win.kernel);
    let ones = Tensor::f_ones(&kshape, (x.kind(), x.device()))?;
    let zeros = vec![0; n];
    let window_sum = |t: &Tensor| {
        t.f_convolution(
            &ones,
            None::<&Tensor>,
            &win.strides,
            &zeros,
            &win.dilations,
            false,
            &zeros,
            channels,
        )
    };
    let sums = window_sum(&pad_all(x, &end_with_overhang, 0.0)?)?;
    let ones_like = x.f_ones_like()?;
    let mask = if include_pad {
        // Ones over input and pads, zeros over the overhang.
        ones_like
            .f_pad(
                torch_pad_list(&win.pads_begin, &win.pads_end),
                "constant",
                1.0,
            )?
            .f_pad(torch_pad_list(&zeros, &overhang), "constant", 0.0)?
    } else {
        pad_all(&ones_like, &end_with_overhang, 0.0)?
    };
    Ok(sums.f_div(&window_sum(&mask)?)?)
}

fn global_pool(c: &OpCtx, i: &[Option<&Tensor>], max: bool) -> OpResult {
    let x = c.input(i, 0)?;
    let dims: Vec<i64> = (2..x.dim() as i64).collect();
    if max {
        one(x.f_amax(&dims, true)?)
    } else {
        one(x.f_mean_dim(&dims[..], true, None::<Kind>)?)
    }
}

/// Running statistics are used (and left alone) unless the model is in training mode with
/// `train_batchnorm`, or the graph itself says `training_mode = 1`.
fn batch_norm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let (scale, bias, mean, var) = (
        c.input(i, 1)?,
        c.input(i, 2)?,
        c.input(i, 3)?,
        c.input(i, 4)?,
    );
    let eps = c.attr_or("epsilon", 1e-5f32)? as f64;
    let momentum = c.attr_or("momentum", 0.9f32)? as f64;
    let graph_training = c.attr_or("training_mode", 0i64)? != 0;
    let update = c.train && c.train_batchnorm;
    if graph_training && !update {
        return batch_norm_graph_training(x, scale, bias, mean, var, eps, momentum);
    }
    // ONNX: running = running * momentum + batch * (1 - momentum); torch's momentum is the batch's weight.
    let y = x.f_batch_norm(
        Some(scale),
        Some(bias),
        Some(mean),
        Some(var),
        update,
        1.0 - momentum,
        eps,
        true,
    )?;
    let mut out = vec![y];
    for k in 1..c.node.outputs.len() {
        out.push(if k % 2 == 1 {
            mean.shallow_clone()
        } else {
            var.shallow_clone()
        });
    }
    Ok(out)
}

/// A graph exported in training mode (`training_mode = 1`): normalize with the batch statistics and return the
/// updated running statistics as outputs, leaving the stored ones alone (ONNX uses the population variance).
fn batch_norm_graph_training(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    momentum: f64,
) -> OpResult {
    if x.dim() < 2 {
        return Err(OpError::Invalid(format!(
            "BatchNormalization needs an input of rank 2 or more, got shape {:?}",
            x.size()
        )));
    }
    let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    let mut shape = vec![1i64; x.dim()];
    shape[1] = -1;
    let batch_mean = x.f_mean_dim(&dims[..], false, None::<Kind>)?;
    let centered = x.f_sub(&batch_mean.f_reshape(&shape)?)?;
    let batch_var = centered
        .f_square()?
        .f_mean_dim(&dims[..], false, None::<Kind>)?;
    let y = centered
        .f_div(&batch_var.f_add_scalar(eps)?.f_sqrt()?.f_reshape(&shape)?)?
        .f_mul(&scale.f_reshape(&shape)?)?
        .f_add(&bias.f_reshape(&shape)?)?;
    let running_mean = mean
        .f_mul_scalar(momentum)?
        .f_add(&batch_mean.f_mul_scalar(1.0 - momentum)?)?;
    let running_var = var
        .f_mul_scalar(momentum)?
        .f_add(&batch_var.f_mul_scalar(1.0 - momentum)?)?;
    Ok(vec![y, running_mean, running_var])
}

fn instance_norm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, scale, bias) = (c.input(i, 0)?, c.input(i, 1)?, c.input(i, 2)?);
    let eps = c.attr_or("epsilon", 1e-5f32)? as f64;
    one(x.f_instance_norm(
        Some(scale),
        Some(bias),
        None::<&Tensor>,
        None,
        true,
        0.1,
        eps,
        true,
    )?)
}

fn layer_norm(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let (x, scale, bias) = (c.input(i, 0)?, c.input(i, 1)?, c.opt(i, 2));
    let rank = x.dim() as i64;
    let a = axis(c.attr_or("axis", -1i64)?, rank)?;
    let eps = c.attr_or("epsilon", 1e-5f32)? as f64;
    let normalized = x.size()[a as usize..].to_vec();
    // Scale and bias shaped like the normalized axes (what exporters write) go into libtorch's fused kernel, one
    // pass each way; ONNX also allows them merely broadcastable, and those are applied after.
    let fits = |t: &Tensor| t.size() == normalized;
    let y = if fits(scale) && bias.is_none_or(fits) {
        x.f_layer_norm(&normalized, Some(scale), bias, eps, true)?
    } else {
        let y = x
            .f_layer_norm(&normalized, None::<&Tensor>, None, eps, true)?
            .f_mul(scale)?;
        match bias {
            Some(b) => y.f_add(b)?,
            None => y,
        }
    };
    let mut out = vec![y];
    if c.node.outputs.len() > 1 {
        // Mean and 1/sqrt(var + eps) over the normalized axes, kept as size-1 dims.
        let dims: Vec<i64> = (a..rank).collect();
        let mean = x.f_mean_dim(&dims[..], true, None::<Kind>)?;
        let var = x
            .f_sub(&mean)?
            .f_square()?
            .f_mean_dim(&dims[..], true, None::<Kind>)?;
        out.push(mean);
        out.push(var.f_add_scalar(eps)?.f_rsqrt()?);
    }
    Ok(out)
}

/// y = x / (bias + alpha / size * Σ_window x²)^beta, the window running over channels.
fn lrn(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let size = c
        .attr::<i64>("size")?
        .ok_or_else(|| OpError::Invalid("attribute `size` is required".into()))?;
    let alpha = c.attr_or("alpha", 1e-4f32)? as f64;
    let beta = c.attr_or("beta", 0.75f32)? as f64;
    let bias = c.attr_or("bias", 1.0f32)? as f64;
    let shape = x.size();
    if shape.len() < 3 || size < 1 {
        return Err(OpError::Invalid(format!(
            "LRN needs an input of rank 3 or more and size >= 1 (input {shape:?}, size {size})"
        )));
    }
    let (n, ch) = (shape[0], shape[1]);
    // [N, 1, C, rest]: pad the channel axis and sum a (size x 1) window over it.
    let sq = x.f_square()?.f_reshape([n, 1, ch, -1])?;
    let before = (size - 1) / 2;
    let after = size - 1 - before;
    let sq = sq.f_pad([0, 0, before, after], "constant", 0.0)?;
    let sum = sq
        .f_avg_pool2d([size, 1], [1, 1], [0, 0], false, true, None::<i64>)?
        .f_mul_scalar(size as f64)?
        .f_reshape(&shape)?;
    let denom = sum
        .f_mul_scalar(alpha / size as f64)?
        .f_add_scalar(bias)?
        .f_pow_tensor_scalar(beta)?;
    one(x.f_div(&denom)?)
}

/// Identity in eval mode; inverted dropout in training mode. The ratio is an attribute before opset 12 and an
/// optional input from then on.
fn dropout(c: &OpCtx, i: &[Option<&Tensor>]) -> OpResult {
    let x = c.input(i, 0)?;
    let ratio = if c.opset < 12 {
        c.attr_or("ratio", 0.5f32)? as f64
    } else {
        c.opt(i, 1).map(super::to_f64).transpose()?.unwrap_or(0.5)
    };
    let wants_mask = c.node.outputs.get(1).is_some_and(|o| !o.is_empty());
    if !c.train || ratio == 0.0 {
        let mut out = vec![x.shallow_clone()];
        if wants_mask {
            out.push(x.f_ones_like()?.f_to_kind(Kind::Bool)?);
        }
        return Ok(out);
    }
    let keep = x.f_rand_like()?.f_ge(ratio)?;
    let y = x.f_mul(&keep)?.f_div_scalar(1.0 - ratio)?;
    Ok(if wants_mask { vec![y, keep] } else { vec![y] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn window(kernel: [i64; 2], strides: [i64; 2], pads: [i64; 2]) -> Window {
        Window {
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilations: vec![1, 1],
            pads_begin: pads.to_vec(),
            pads_end: pads.to_vec(),
        }
    }

    /// Largest |a − b| relative to the largest |b|.
    fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.abs().max().double_value(&[]);
        (a - b).abs().max().double_value(&[]) / scale
    }

    /// Values and the gradients of input, kernel and bias (an attack asks for the first, training for the others)
    /// of the convolution and of its GEMM form, for a contiguous and a channels-last kernel, with and without bias,
    /// on inputs that are (28x28) and are not (30x29) multiples of the kernel.
    #[test]
    fn a_tiling_convolution_is_the_same_function_as_a_gemm_of_its_patches() {
        tch::manual_seed(7);
        for (hw, channels, with_bias) in [
            ([28, 28], 1, true),
            ([30, 29], 3, false),
            ([28, 28], 3, true),
        ] {
            let x = Tensor::randn([5, channels, hw[0], hw[1]], (Kind::Float, Device::Cpu));
            let w = Tensor::randn([8, channels, 7, 7], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([8], (Kind::Float, Device::Cpu));
            for layout in [false, true] {
                let win = window([7, 7], [7, 7], [0, 0]);
                // Each side gets its own leaves, so that each side's gradients are its own.
                let leaves = || {
                    let kernel = crate::device::amp::channels_last(&w, layout)
                        .unwrap()
                        .copy()
                        .set_requires_grad(true);
                    // (One input channel: both layouts are the same strides.)
                    if channels > 1 {
                        assert_eq!(
                            kernel.f_permute([0, 2, 3, 1]).unwrap().is_contiguous(),
                            layout
                        );
                    }
                    (
                        x.copy().set_requires_grad(true),
                        kernel,
                        b.copy().set_requires_grad(true),
                    )
                };
                let (xa, ka, ba) = leaves();
                let got = patch_linear(&xa, &ka, with_bias.then_some(&ba), &win, 1)
                    .unwrap()
                    .expect("tiles");
                let (xb, kb, bb) = leaves();
                let want = xb.convolution(
                    &kb,
                    with_bias.then_some(&bb),
                    [7, 7],
                    [0, 0],
                    [1, 1],
                    false,
                    [0, 0],
                    1,
                );
                assert_eq!(got.size(), want.size());
                let gap = relative_gap(&got, &want);
                assert!(gap <= 1e-5, "values differ by {gap} of their scale");
                let upstream = Tensor::randn(want.size(), (Kind::Float, Device::Cpu));
                (&got * &upstream).sum(Kind::Float).backward();
                (&want * &upstream).sum(Kind::Float).backward();
                let mut pairs = vec![
                    ("input", xa.grad(), xb.grad()),
                    ("kernel", ka.grad(), kb.grad()),
                ];
                if with_bias {
                    pairs.push(("bias", ba.grad(), bb.grad()));
                }
                for (what, a, b) in pairs {
                    let gap = relative_gap(&a, &b);
                    assert!(
                        gap <= 1e-5,
                        "{what} gradients differ by {gap} of their scale"
                    );
                }
            }
        }
    }

    #[test]
    fn only_exact_tilings_of_at_least_4x4_become_gemms() {
        let x = Tensor::zeros([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let w = Tensor::zeros([4, 3, 4, 4], (Kind::Float, Device::Cpu));
        let takes = |win: &Window, w: &Tensor, group| {
            patch_linear(&x, w, None, win, group).unwrap().is_some()
        };
        assert!(takes(&window([4, 4], [4, 4], [0, 0]), &w, 1));
        assert!(
            !takes(&window([4, 4], [2, 2], [0, 0]), &w, 1),
            "overlapping windows"
        );
        assert!(!takes(&window([4, 4], [4, 4], [1, 1]), &w, 1), "padding");
        assert!(!takes(&window([4, 4], [4, 4], [0, 0]), &w, 3), "groups");
        let mut dilated = window([4, 4], [4, 4], [0, 0]);
        dilated.dilations = vec![2, 2];
        assert!(!takes(&dilated, &w, 1), "dilation");
        let small = Tensor::zeros([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        assert!(
            !takes(&window([2, 2], [2, 2], [0, 0]), &small, 1),
            "2x2 stays a convolution"
        );
        let wrong_channels = Tensor::zeros([4, 2, 4, 4], (Kind::Float, Device::Cpu));
        assert!(
            !takes(&window([4, 4], [4, 4], [0, 0]), &wrong_channels, 1),
            "a channel mismatch is left to the convolution's own error"
        );
    }
}
