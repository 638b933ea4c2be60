//! The model's image input: which layout it takes (`auto` reads it from the ONNX input shape) and the size of one
//! image in pixel space.

use thiserror::Error;

use super::model::{Dim, ValueInfo};
use crate::config::InputLayout;
use crate::model::Layout;

/// `model.input_layout: auto` on an input whose shape does not say its layout.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot tell the layout of input `{input}` {shape}; set model.input_layout (nchw, nhwc or flat)")]
pub struct LayoutError {
    pub input: String,
    pub shape: String,
}

/// The concrete layout for a configured one: `auto` picks NCHW for rank 4 with 1 or 3 channels at dim 1, NHWC for
/// 1 or 3 at dim 3, and Flat for rank 2.
pub fn resolve_layout(input: &ValueInfo, requested: InputLayout) -> Result<Layout, LayoutError> {
    match requested {
        InputLayout::Nchw => return Ok(Layout::Nchw),
        InputLayout::Nhwc => return Ok(Layout::Nhwc),
        InputLayout::Flat => return Ok(Layout::Flat),
        InputLayout::Auto => {}
    }
    let dims = input.dims.as_deref().unwrap_or(&[]);
    let is_channels = |d: &Dim| matches!(d, Dim::Fixed(1 | 3));
    match dims {
        [_, c, _, _] if is_channels(c) => Ok(Layout::Nchw),
        [_, _, _, c] if is_channels(c) => Ok(Layout::Nhwc),
        [_, _] => Ok(Layout::Flat),
        _ => Err(LayoutError {
            input: input.name.clone(),
            shape: input.shape_string(),
        }),
    }
}

/// `[C, H, W]` of one image, when the input shape states it (never for Flat: the dataset must say).
pub fn infer_input_chw(input: &ValueInfo, layout: Layout) -> Option<[i64; 3]> {
    let fixed = |d: &Dim| match d {
        Dim::Fixed(n) if *n > 0 => Some(*n),
        _ => None,
    };
    match (layout, input.dims.as_deref()?) {
        (Layout::Nchw, [_, c, h, w]) => Some([fixed(c)?, fixed(h)?, fixed(w)?]),
        (Layout::Nhwc, [_, h, w, c]) => Some([fixed(c)?, fixed(h)?, fixed(w)?]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dims: Vec<Dim>) -> ValueInfo {
        ValueInfo {
            name: "x".into(),
            elem_type: 1,
            dims: Some(dims),
        }
    }

    #[test]
    fn auto_layout_from_the_input_shape() {
        use Dim::*;
        let nchw = info(vec![Symbolic("n".into()), Fixed(3), Fixed(32), Fixed(32)]);
        assert_eq!(resolve_layout(&nchw, InputLayout::Auto), Ok(Layout::Nchw));
        assert_eq!(infer_input_chw(&nchw, Layout::Nchw), Some([3, 32, 32]));
        let nhwc = info(vec![Fixed(1), Fixed(28), Fixed(28), Fixed(1)]);
        // 1 at dim 1 wins only when dim 1 is a channel count; here dim 1 is 28.
        assert_eq!(resolve_layout(&nhwc, InputLayout::Auto), Ok(Layout::Nhwc));
        assert_eq!(infer_input_chw(&nhwc, Layout::Nhwc), Some([1, 28, 28]));
        let flat = info(vec![Symbolic("n".into()), Fixed(784)]);
        assert_eq!(resolve_layout(&flat, InputLayout::Auto), Ok(Layout::Flat));
        assert_eq!(infer_input_chw(&flat, Layout::Flat), None);
        let odd = info(vec![Fixed(1), Fixed(5), Fixed(5), Fixed(5)]);
        assert!(resolve_layout(&odd, InputLayout::Auto).is_err());
        assert_eq!(resolve_layout(&odd, InputLayout::Nchw), Ok(Layout::Nchw));
    }
}
