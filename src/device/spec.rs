//! `runtime.devices`: which devices the daemon spreads its jobs over — `auto` (every CUDA device libtorch sees,
//! else the CPU), `cpu`, or a list such as `[cuda:0, cuda:1]` — parsed with errors that name the offending entry,
//! and resolved against the host's CUDA device count into the daemon's device list.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceSpecError {
    #[error("`{0}` is not a device: expected cpu, cuda or cuda:N (N a GPU index)")]
    Bad(String),
    #[error("`{0}` is listed twice")]
    Duplicate(String),
    #[error("the device list is empty: write `auto`, `cpu` or at least one `cuda:N`")]
    Empty,
    #[error("{device} requested but libtorch sees {count} CUDA device(s)")]
    Unavailable { device: String, count: usize },
}

/// One device a job can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    Cpu,
    Cuda(usize),
}

impl DeviceId {
    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(text: &str) -> Result<Self, DeviceSpecError> {
        let s = text.trim();
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceSpecError::Bad(s.to_owned())),
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    pub fn tch(self) -> tch::Device {
        match self {
            Self::Cpu => tch::Device::Cpu,
            Self::Cuda(i) => tch::Device::Cuda(i),
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The value of `runtime.devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DevicesRepr", into = "DevicesRepr")]
pub enum DevicesSpec {
    /// Every CUDA device libtorch sees, else the CPU (or the one device `runtime.device` names, when it names one).
    Auto,
    Cpu,
    List(Vec<DeviceId>),
}

/// How `runtime.devices` is written in YAML: a word or a list of device names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DevicesRepr {
    Word(String),
    List(Vec<String>),
}

impl TryFrom<DevicesRepr> for DevicesSpec {
    type Error = DeviceSpecError;

    fn try_from(repr: DevicesRepr) -> Result<Self, Self::Error> {
        match repr {
            DevicesRepr::Word(w) => match w.trim() {
                "auto" => Ok(Self::Auto),
                "cpu" => Ok(Self::Cpu),
                other => Ok(Self::List(vec![DeviceId::parse(other)?])),
            },
            DevicesRepr::List(items) => {
                if items.is_empty() {
                    return Err(DeviceSpecError::Empty);
                }
                let mut ids: Vec<DeviceId> = Vec::with_capacity(items.len());
                for item in &items {
                    let id = DeviceId::parse(item)?;
                    if ids.contains(&id) {
                        return Err(DeviceSpecError::Duplicate(id.to_string()));
                    }
                    ids.push(id);
                }
                Ok(Self::List(ids))
            }
        }
    }
}

impl From<DevicesSpec> for DevicesRepr {
    fn from(spec: DevicesSpec) -> Self {
        match spec {
            DevicesSpec::Auto => Self::Word("auto".into()),
            DevicesSpec::Cpu => Self::Word("cpu".into()),
            DevicesSpec::List(ids) => Self::List(ids.iter().map(ToString::to_string).collect()),
        }
    }
}

impl DevicesSpec {
    /// The devices this spec names on a host with `cuda_count` CUDA devices. `single` is `runtime.device`: with
    /// `auto` here, a `runtime.device` naming one device (`cpu`, `cuda:1`) keeps the daemon on that device alone,
    /// as before the pool existed.
    pub fn resolve(
        &self,
        single: &str,
        cuda_count: usize,
    ) -> Result<Vec<DeviceId>, DeviceSpecError> {
        let ids = match self {
            Self::Cpu => vec![DeviceId::Cpu],
            Self::Auto => match single.trim() {
                "auto" if cuda_count > 0 => (0..cuda_count).map(DeviceId::Cuda).collect(),
                "auto" => vec![DeviceId::Cpu],
                one => vec![DeviceId::parse(one)?],
            },
            Self::List(ids) => ids.clone(),
        };
        if let Some(missing) = ids
            .iter()
            .find(|id| matches!(id, DeviceId::Cuda(i) if *i >= cuda_count))
        {
            return Err(DeviceSpecError::Unavailable {
                device: missing.to_string(),
                count: cuda_count,
            });
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<DevicesSpec, String> {
        serde_norway::from_str::<DevicesSpec>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn words_and_lists_parse() {
        assert_eq!(yaml("auto").unwrap(), DevicesSpec::Auto);
        assert_eq!(yaml("cpu").unwrap(), DevicesSpec::Cpu);
        assert_eq!(
            yaml("cuda:1").unwrap(),
            DevicesSpec::List(vec![DeviceId::Cuda(1)])
        );
        let e = yaml("[cuda:0, cuda, cpu]").unwrap_err();
        assert!(e.contains("`cuda:0` is listed twice"), "{e}");
        assert_eq!(
            yaml("[cuda:2, cuda:0]").unwrap(),
            DevicesSpec::List(vec![DeviceId::Cuda(2), DeviceId::Cuda(0)])
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let e = yaml("[cuda:0, gpu1]").unwrap_err();
        assert!(e.contains("`gpu1` is not a device"), "{e}");
        let e = yaml("cuda:x").unwrap_err();
        assert!(e.contains("`cuda:x` is not a device"), "{e}");
        assert!(yaml("[]").unwrap_err().contains("empty"));
    }

    #[test]
    fn resolves_against_the_host() {
        let all = DevicesSpec::Auto.resolve("auto", 3).unwrap();
        assert_eq!(
            all,
            vec![DeviceId::Cuda(0), DeviceId::Cuda(1), DeviceId::Cuda(2)]
        );
        assert_eq!(
            DevicesSpec::Auto.resolve("auto", 0).unwrap(),
            vec![DeviceId::Cpu]
        );
        assert_eq!(
            DevicesSpec::Auto.resolve("cpu", 2).unwrap(),
            vec![DeviceId::Cpu]
        );
        assert_eq!(
            DevicesSpec::Auto.resolve("cuda:1", 2).unwrap(),
            vec![DeviceId::Cuda(1)]
        );
        assert_eq!(
            DevicesSpec::Cpu.resolve("auto", 4).unwrap(),
            vec![DeviceId::Cpu]
        );
        let e = DevicesSpec::List(vec![DeviceId::Cuda(0), DeviceId::Cuda(3)])
            .resolve("auto", 2)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cuda:3 requested but libtorch sees 2 CUDA device(s)"
        );
        assert!(DevicesSpec::Auto.resolve("tpu", 0).is_err());
    }

    #[test]
    fn round_trips_through_yaml() {
        for spec in [
            DevicesSpec::Auto,
            DevicesSpec::Cpu,
            DevicesSpec::List(vec![DeviceId::Cuda(0), DeviceId::Cuda(1)]),
        ] {
            let text = serde_norway::to_string(&spec).unwrap();
            assert_eq!(yaml(&text).unwrap(), spec, "{text}");
        }
    }
}
