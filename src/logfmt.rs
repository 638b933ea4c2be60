//! Numbers in log lines as people read them: four significant digits (`loss=1.182 lr=0.03825`, not
//! `loss=1.181561209125881 lr=0.03824798160583012`). Reports keep full precision; only log fields use this.

use std::fmt;

/// A value shown with four significant digits in a log field (`loss = %Sig(x)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sig(pub f64);

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        if x == 0.0 || !x.is_finite() {
            return write!(f, "{x}");
        }
        let magnitude = x.abs().log10().floor() as i32;
        if !(-4..6).contains(&magnitude) {
            return write!(f, "{x:.3e}");
        }
        let decimals = (3 - magnitude).max(0) as usize;
        let text = format!("{x:.decimals$}");
        // 1.500 → 1.5, 2.000 → 2
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            &text
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::Sig;

    #[test]
    fn four_significant_digits_for_people() {
        let shown = |x: f64| Sig(x).to_string();
        assert_eq!(shown(1.181561209125881), "1.182");
        assert_eq!(shown(0.03824798160583012), "0.03825");
        assert_eq!(shown(1234.5678), "1235");
        assert_eq!(shown(2.0), "2");
        assert_eq!(shown(-0.5), "-0.5");
        assert_eq!(shown(0.0), "0");
        assert_eq!(shown(3.2e-7), "3.200e-7");
        assert_eq!(shown(f64::NAN), "NaN");
    }
}
