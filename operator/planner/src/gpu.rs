//! A stage's GPU share, translated into what the cluster's sharing mode asks for:
//! extended resources, environment variables and pod annotations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// How the cluster shares NVIDIA GPUs (operator configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum GpuSharing {
    /// Whole GPUs only: the share is rounded up.
    Whole {
        #[serde(default = "nvidia_gpu")]
        resource: String,
    },
    /// NVIDIA device plugin time-slicing: each GPU is advertised as `slices` replicas.
    #[serde(rename_all = "camelCase")]
    TimeSlicing {
        slices: u32,
        #[serde(default = "nvidia_gpu")]
        resource: String,
        /// The plugin's failRequestsGreaterThanOne: a pod may ask for one slice only.
        #[serde(default)]
        fail_requests_greater_than_one: bool,
    },
    /// NVIDIA MPS: `slices` replicas per GPU, with compute and memory limits per client.
    #[serde(rename_all = "camelCase")]
    Mps {
        slices: u32,
        #[serde(default = "nvidia_gpu_shared")]
        resource: String,
        /// Memory of one GPU, to pin each client's share when its need is unknown.
        #[serde(default)]
        gpu_memory_bytes: Option<u64>,
    },
    /// MIG: the profiles the nodes offer.
    Mig { profiles: Vec<MigProfile> },
    /// HAMi: `nvidia.com/gpu`, `nvidia.com/gpucores` (percent) and `nvidia.com/gpumem` (MiB).
    #[serde(rename_all = "camelCase")]
    Hami {
        /// Memory of one GPU, to size gpumem from the share when the need is unknown.
        #[serde(default)]
        gpu_memory_bytes: Option<u64>,
    },
    /// KAI Scheduler (Run:ai): the share as a pod annotation.
    /// Pods go to KAI's scheduler (`schedulerName`), in a queue (its label): without
    /// both the default scheduler places them and nothing enforces the fraction.
    #[serde(rename_all = "camelCase")]
    Kai {
        #[serde(default = "kai_annotation")]
        annotation: String,
        #[serde(default = "kai_scheduler")]
        scheduler_name: String,
        /// The KAI queue the stage pods are charged to.
        #[serde(default = "kai_queue")]
        queue: String,
        #[serde(default = "kai_queue_label")]
        queue_label: String,
    },
    /// Dynamic Resource Allocation (resource.k8s.io/v1): the operator makes a
    /// ResourceClaimTemplate per GPU stage, one request whose `firstAvailable`
    /// alternatives are, in order: a MIG device with the memory it needs (and a video
    /// decoder), a share of one GPU's memory (consumable capacity), a whole GPU. The
    /// scheduler takes the first it can place.
    #[serde(rename_all = "camelCase")]
    Dra(DraSharing),
}

/// Where and how a DRA driver publishes its GPUs (defaults: NVIDIA's DRA driver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DraSharing {
    /// DeviceClass of whole GPUs (also shared by capacity).
    #[serde(default = "dra_gpu_class")]
    pub device_class: String,
    /// DeviceClass of MIG devices; empty: no MIG alternative.
    #[serde(default = "dra_mig_class")]
    pub mig_device_class: String,
    /// The driver's domain, qualifying its capacities in selectors.
    #[serde(default = "dra_driver")]
    pub driver: String,
    /// The capacity devices publish their memory under.
    #[serde(default = "dra_memory")]
    pub memory_capacity: String,
    /// The capacity of a MIG device that counts its video decoders (NVDEC); empty: the
    /// MIG alternative does not ask for one.
    #[serde(default = "dra_decoders")]
    pub decoder_capacity: String,
    /// Memory of one GPU, to size a share from the stage's fraction when its own need
    /// has not been observed; neither known: no share alternative.
    #[serde(default)]
    pub gpu_memory_bytes: Option<u64>,
}

fn dra_gpu_class() -> String {
    "gpu.nvidia.com".into()
}
fn dra_mig_class() -> String {
    "mig.nvidia.com".into()
}
fn dra_driver() -> String {
    "gpu.nvidia.com".into()
}
fn dra_memory() -> String {
    "memory".into()
}
fn dra_decoders() -> String {
    "decoders".into()
}

/// One alternative of a DRA claim's request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DraAlternative {
    /// `mig`, `share` or `whole`: the subrequest's name (the allocation names it).
    pub name: String,
    pub device_class: String,
    /// CEL selectors a device must pass.
    pub selectors: Vec<String>,
    /// Consumable capacity to take: (capacity name, bytes).
    pub capacity: Option<(String, u64)>,
}

/// What a GPU stage's ResourceClaimTemplate asks for.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DraClaim {
    /// Whole GPUs (a share above one GPU), with no alternatives.
    pub count: u32,
    /// In order of preference; empty when `count` whole GPUs are asked for.
    pub alternatives: Vec<DraAlternative>,
    pub device_class: String,
    /// The GPU memory the one device must have (observed need, else the fraction of
    /// `gpuMemoryBytes`); None for whole GPUs or when neither is known.
    pub memory_bytes: Option<u64>,
}

impl Default for GpuSharing {
    fn default() -> Self {
        GpuSharing::Whole {
            resource: nvidia_gpu(),
        }
    }
}

fn nvidia_gpu() -> String {
    "nvidia.com/gpu".into()
}
fn nvidia_gpu_shared() -> String {
    "nvidia.com/gpu.shared".into()
}
fn kai_annotation() -> String {
    "gpu-fraction".into()
}
fn kai_scheduler() -> String {
    "kai-scheduler".into()
}
fn kai_queue() -> String {
    "default".into()
}
fn kai_queue_label() -> String {
    "kai.scheduler/queue".into()
}

/// One MIG profile, e.g. `nvidia.com/mig-1g.10gb` (1 of 7 compute slices, 10 GB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigProfile {
    pub resource: String,
    /// Compute slices of this profile (the `1` of `1g`); read from the name when unset.
    #[serde(default)]
    pub compute_slices: Option<u32>,
    /// Compute slices of the whole GPU (7 on A100 and H100).
    #[serde(default = "seven")]
    pub total_slices: u32,
    /// Memory; read from the name (`10gb`) when unset.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

fn seven() -> u32 {
    7
}

impl MigProfile {
    pub fn new(resource: &str) -> Self {
        MigProfile {
            resource: resource.into(),
            compute_slices: None,
            total_slices: 7,
            memory_bytes: None,
        }
    }

    /// (compute slices, memory bytes) from the fields or the `<g>g.<mem>gb` name.
    fn shape(&self) -> Option<(u32, u64)> {
        let tail = self.resource.rsplit("mig-").next()?;
        let (g, mem) = tail.split_once("g.")?;
        let from_name_g = g.parse::<u32>().ok();
        let from_name_mem = mem
            .strip_suffix("gb")
            .and_then(|m| m.parse::<u64>().ok())
            .map(|gb| gb * GIB);
        Some((
            self.compute_slices.or(from_name_g)?,
            self.memory_bytes.or(from_name_mem)?,
        ))
    }
}

/// What a pod asks for to get its share.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuRequest {
    /// Extended resources: name -> integer quantity.
    pub resources: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Pod labels (KAI's queue).
    pub labels: BTreeMap<String, String>,
    /// The scheduler that must place the pods (KAI's), when not the default one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Sharing mode Dra: the claim the stage's pods get instead of extended resources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<DraClaim>,
    /// The share actually granted (rounded to what the mode can give).
    pub granted: f64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    #[error("GPU share {0} is not a number between 0 (exclusive) and 8")]
    InvalidFraction(f64),
    #[error(
        "a share of {fraction} GPUs is more than one GPU; {mode} shares one GPU, so ask for whole GPUs (1, 2, ...) or use sharing mode whole"
    )]
    AboveOne { fraction: f64, mode: &'static str },
    #[error("a share of {fraction} GPUs under whole-GPU mode must be a whole number above 1")]
    NotWhole { fraction: f64 },
    #[error(
        "a share of {fraction} needs {slices} time slices of {per_gpu} but the device plugin refuses requests above one (failRequestsGreaterThanOne); ask for at most {max_share}"
    )]
    OneSliceOnly {
        fraction: f64,
        slices: u32,
        per_gpu: u32,
        max_share: f64,
    },
    #[error("no MIG profile fits a share of {fraction}{memory}: available {available}")]
    NoMigProfile {
        fraction: f64,
        memory: String,
        available: String,
    },
    #[error("GPU sharing configuration: {0}")]
    Config(String),
}

/// Translates a share of one GPU (and the GPU memory one instance needs, when known).
pub fn translate(
    fraction: f64,
    gpu_memory_bytes: Option<u64>,
    sharing: &GpuSharing,
) -> Result<GpuRequest, GpuError> {
    if !(fraction.is_finite() && fraction > 0.0 && fraction <= 8.0) {
        return Err(GpuError::InvalidFraction(fraction));
    }
    let mut req = GpuRequest::default();
    let whole = fraction > 1.0;
    match sharing {
        GpuSharing::Whole { resource } => {
            let n = fraction.ceil() as u32;
            if whole && fraction.fract() != 0.0 {
                return Err(GpuError::NotWhole { fraction });
            }
            req.resources.insert(resource.clone(), n.to_string());
            req.granted = f64::from(n);
            req.reason = format!("whole GPUs: {fraction} rounds up to {n}");
        }
        GpuSharing::TimeSlicing {
            slices,
            resource,
            fail_requests_greater_than_one,
        } => {
            let per_gpu = positive(*slices, "time-slicing slices")?;
            if whole {
                return Err(GpuError::AboveOne {
                    fraction,
                    mode: "time-slicing",
                });
            }
            let n = slices_for(fraction, per_gpu);
            if *fail_requests_greater_than_one && n > 1 {
                return Err(GpuError::OneSliceOnly {
                    fraction,
                    slices: n,
                    per_gpu,
                    max_share: 1.0 / f64::from(per_gpu),
                });
            }
            req.resources.insert(resource.clone(), n.to_string());
            req.granted = f64::from(n) / f64::from(per_gpu);
            req.reason = format!(
                "time-slicing: {fraction} of a GPU is {n} of {per_gpu} slices (no memory or fault isolation)"
            );
        }
        GpuSharing::Mps {
            slices,
            resource,
            gpu_memory_bytes: total,
        } => {
            let per_gpu = positive(*slices, "MPS slices")?;
            if whole {
                return Err(GpuError::AboveOne {
                    fraction,
                    mode: "MPS",
                });
            }
            let n = slices_for(fraction, per_gpu);
            let share = f64::from(n) / f64::from(per_gpu);
            req.resources.insert(resource.clone(), n.to_string());
            req.env.insert(
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
                ((share * 100.0).round() as u32).to_string(),
            );
            let pinned = gpu_memory_bytes.or(total.map(|t| (t as f64 * share) as u64));
            if let Some(bytes) = pinned {
                req.env.insert(
                    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
                    format!("0={}M", bytes.div_ceil(MIB)),
                );
            }
            req.granted = share;
            req.reason = format!(
                "MPS: {fraction} of a GPU is {n} of {per_gpu} slices, {:.0}% of the SMs",
                share * 100.0
            );
        }
        GpuSharing::Mig { profiles } => {
            if whole {
                return Err(GpuError::AboveOne {
                    fraction,
                    mode: "MIG",
                });
            }
            let mut shaped: Vec<(&MigProfile, u32, u64)> = Vec::new();
            for p in profiles {
                let (g, mem) = p.shape().ok_or_else(|| {
                    GpuError::Config(format!(
                        "MIG profile {:?} has no compute slices or memory (name it like nvidia.com/mig-1g.10gb or set computeSlices and memoryBytes)",
                        p.resource
                    ))
                })?;
                shaped.push((p, g, mem));
            }
            let need_mem = gpu_memory_bytes.unwrap_or(0);
            let fits = |&&(p, g, mem): &&(&MigProfile, u32, u64)| {
                f64::from(g) / f64::from(p.total_slices.max(1)) + 1e-9 >= fraction
                    && mem >= need_mem
            };
            let best = shaped
                .iter()
                .filter(fits)
                .min_by_key(|(p, g, mem)| (*g * 1000 / p.total_slices.max(1), *mem));
            let Some(&(p, g, mem)) = best else {
                let available = shaped
                    .iter()
                    .map(|(p, g, mem)| {
                        format!(
                            "{} ({}/{} of the compute, {} GiB)",
                            p.resource,
                            g,
                            p.total_slices,
                            mem / GIB
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(GpuError::NoMigProfile {
                    fraction,
                    memory: gpu_memory_bytes
                        .map(|b| format!(" and {} MiB of GPU memory", b.div_ceil(MIB)))
                        .unwrap_or_default(),
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available
                    },
                });
            };
            req.resources.insert(p.resource.clone(), "1".into());
            req.granted = f64::from(g) / f64::from(p.total_slices.max(1));
            req.reason = format!(
                "MIG: smallest profile with at least {fraction} of the compute{} is {} ({g}/{} , {} GiB)",
                gpu_memory_bytes
                    .map(|b| format!(" and {} MiB", b.div_ceil(MIB)))
                    .unwrap_or_default(),
                p.resource,
                p.total_slices,
                mem / GIB
            );
        }
        GpuSharing::Hami {
            gpu_memory_bytes: total,
        } => {
            let gpus = fraction.ceil() as u32;
            let cores = if whole {
                100
            } else {
                ((fraction * 100.0).ceil() as u32).clamp(1, 100)
            };
            req.resources
                .insert("nvidia.com/gpu".into(), gpus.to_string());
            req.resources
                .insert("nvidia.com/gpucores".into(), cores.to_string());
            let mem = gpu_memory_bytes.or(total.map(|t| (t as f64 * fraction.min(1.0)) as u64));
            if let Some(bytes) = mem {
                req.resources
                    .insert("nvidia.com/gpumem".into(), bytes.div_ceil(MIB).to_string());
            }
            req.granted = if whole {
                f64::from(gpus)
            } else {
                f64::from(cores) / 100.0
            };
            req.reason = format!(
                "HAMi: {gpus} GPU(s) at {cores}% of the cores{}",
                mem.map(|b| format!(", {} MiB", b.div_ceil(MIB)))
                    .unwrap_or_default()
            );
        }
        GpuSharing::Kai {
            annotation,
            scheduler_name,
            queue,
            queue_label,
        } => {
            req.scheduler_name = Some(scheduler_name.clone());
            req.labels.insert(queue_label.clone(), queue.clone());
            if whole {
                let n = fraction.ceil() as u32;
                req.resources.insert("nvidia.com/gpu".into(), n.to_string());
                req.granted = f64::from(n);
                req.reason = format!("KAI: above one GPU, {n} whole GPUs");
            } else {
                req.annotations
                    .insert(annotation.clone(), format!("{fraction}"));
                req.granted = fraction;
                req.reason = format!("KAI: annotation {annotation}={fraction}");
            }
        }
        GpuSharing::Dra(dra) => {
            req.claim = Some(dra_claim(fraction, gpu_memory_bytes, dra));
            req.granted = if whole { fraction.ceil() } else { fraction };
            req.reason = match &req.claim {
                Some(c) if c.alternatives.is_empty() => {
                    format!("DRA: {} whole GPUs of class {}", c.count, c.device_class)
                }
                Some(c) => format!(
                    "DRA: the first available of {}",
                    c.alternatives
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join(", then ")
                ),
                None => String::new(),
            };
        }
    }
    Ok(req)
}

fn describe(a: &DraAlternative) -> String {
    match (a.name.as_str(), &a.capacity) {
        ("share", Some((_, bytes))) => {
            format!("{} MiB of a GPU ({})", bytes.div_ceil(MIB), a.device_class)
        }
        ("mig", _) => format!("a MIG device ({})", a.device_class),
        _ if !a.selectors.is_empty() => {
            format!("a whole GPU with that much memory ({})", a.device_class)
        }
        _ => format!("a whole GPU ({})", a.device_class),
    }
}

/// The claim for a share of one GPU (or whole GPUs above one): MIG with the memory
/// needed (and a decoder), then that memory of a GPU, then a whole GPU.
fn dra_claim(fraction: f64, gpu_memory_bytes: Option<u64>, dra: &DraSharing) -> DraClaim {
    if fraction > 1.0 {
        return DraClaim {
            count: fraction.ceil() as u32,
            alternatives: Vec::new(),
            device_class: dra.device_class.clone(),
            memory_bytes: None,
        };
    }
    // Observed need first; else the fraction of a GPU of known size.
    let need = gpu_memory_bytes
        .or(dra
            .gpu_memory_bytes
            .map(|t| (t as f64 * fraction).ceil() as u64))
        .filter(|b| *b > 0);
    let capacity = |name: &str| format!("device.capacity[{:?}].{name}", dra.driver);
    let mut alternatives = Vec::new();
    if !dra.mig_device_class.is_empty() {
        let mut selectors = Vec::new();
        if let Some(bytes) = need {
            selectors.push(format!(
                "{}.compareTo(quantity(\"{bytes}\")) >= 0",
                capacity(&dra.memory_capacity)
            ));
        }
        if !dra.decoder_capacity.is_empty() {
            selectors.push(format!(
                "{}.compareTo(quantity(\"1\")) >= 0",
                capacity(&dra.decoder_capacity)
            ));
        }
        alternatives.push(DraAlternative {
            name: "mig".into(),
            device_class: dra.mig_device_class.clone(),
            selectors,
            capacity: None,
        });
    }
    if let Some(bytes) = need {
        alternatives.push(DraAlternative {
            name: "share".into(),
            device_class: dra.device_class.clone(),
            selectors: Vec::new(),
            capacity: Some((dra.memory_capacity.clone(), bytes)),
        });
    }
    // A whole GPU with less memory than the stage needs would only fail later (out of
    // memory): refused where the device publishes its memory; one that does not may go.
    // (`device.capacity[domain]` of a device without that domain is an empty map.)
    let whole_fits = need.map(|bytes| {
        format!(
            "!({:?} in device.capacity[{:?}]) || {}.compareTo(quantity(\"{bytes}\")) >= 0",
            dra.memory_capacity,
            dra.driver,
            capacity(&dra.memory_capacity)
        )
    });
    alternatives.push(DraAlternative {
        name: "whole".into(),
        device_class: dra.device_class.clone(),
        selectors: whole_fits.into_iter().collect(),
        capacity: None,
    });
    DraClaim {
        count: 1,
        alternatives,
        device_class: dra.device_class.clone(),
        memory_bytes: need,
    }
}

fn positive(v: u32, what: &str) -> Result<u32, GpuError> {
    if v == 0 {
        Err(GpuError::Config(format!("{what} must be at least 1")))
    } else {
        Ok(v)
    }
}

/// Slices needed for a share: rounded up, so a stage never gets less than it asked for
/// (0.3 of 4 slices is 2). The tolerance keeps 0.25 x 4 at exactly one slice.
fn slices_for(fraction: f64, per_gpu: u32) -> u32 {
    ((fraction * f64::from(per_gpu) - 1e-9).ceil() as u32).clamp(1, per_gpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(r: &GpuRequest, k: &str) -> Option<String> {
        r.resources.get(k).cloned()
    }

    #[test]
    fn whole_rounds_up() {
        let r = translate(0.25, None, &GpuSharing::default()).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("1"));
        let r = translate(2.0, None, &GpuSharing::default()).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("2"));
        assert!(matches!(
            translate(1.5, None, &GpuSharing::default()),
            Err(GpuError::NotWhole { .. })
        ));
        assert!(matches!(
            translate(0.0, None, &GpuSharing::default()),
            Err(GpuError::InvalidFraction(_))
        ));
    }

    #[test]
    fn time_slicing_counts_slices() {
        let ts = GpuSharing::TimeSlicing {
            slices: 4,
            resource: "nvidia.com/gpu.shared".into(),
            fail_requests_greater_than_one: false,
        };
        // 0.3 x 4 = 1.2 slices, rounded up to 2 (half the GPU); 0.25 x 4 is exactly 1.
        let r = translate(0.3, None, &ts).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu.shared").as_deref(), Some("2"));
        assert_eq!(r.granted, 0.5);
        let r = translate(0.25, None, &ts).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu.shared").as_deref(), Some("1"));
        let strict = GpuSharing::TimeSlicing {
            slices: 4,
            resource: "nvidia.com/gpu".into(),
            fail_requests_greater_than_one: true,
        };
        let e = translate(0.5, None, &strict).expect_err("two slices refused");
        assert!(e.to_string().contains("at most 0.25"), "{e}");
        assert!(matches!(
            translate(2.0, None, &ts),
            Err(GpuError::AboveOne { .. })
        ));
    }

    #[test]
    fn mps_sets_limits() {
        let mps = GpuSharing::Mps {
            slices: 8,
            resource: "nvidia.com/gpu.shared".into(),
            gpu_memory_bytes: Some(80 * GIB),
        };
        let r = translate(0.25, None, &mps).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu.shared").as_deref(), Some("2"));
        assert_eq!(r.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
        assert_eq!(r.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=20480M");
        // A measured need pins the limit instead of the share of the GPU.
        let r = translate(0.25, Some(3 * GIB), &mps).expect("ok");
        assert_eq!(r.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=3072M");
    }

    #[test]
    fn mig_picks_the_smallest_that_fits() {
        let mig = GpuSharing::Mig {
            profiles: [
                "nvidia.com/mig-3g.40gb",
                "nvidia.com/mig-1g.10gb",
                "nvidia.com/mig-2g.20gb",
            ]
            .map(MigProfile::new)
            .to_vec(),
        };
        let r = translate(0.1, None, &mig).expect("ok");
        assert_eq!(res(&r, "nvidia.com/mig-1g.10gb").as_deref(), Some("1"));
        // 0.25 needs 2 of 7 compute slices.
        let r = translate(0.25, None, &mig).expect("ok");
        assert_eq!(res(&r, "nvidia.com/mig-2g.20gb").as_deref(), Some("1"));
        // 0.1 of the compute but 15 GiB of memory: 2g.20gb.
        let r = translate(0.1, Some(15 * GIB), &mig).expect("ok");
        assert_eq!(res(&r, "nvidia.com/mig-2g.20gb").as_deref(), Some("1"));
    }

    #[test]
    fn mig_error_names_the_profiles() {
        let mig = GpuSharing::Mig {
            profiles: vec![MigProfile::new("nvidia.com/mig-1g.10gb")],
        };
        let e = translate(0.5, None, &mig).expect_err("1/7 is less than 0.5");
        let text = e.to_string();
        assert!(text.contains("0.5"), "{text}");
        assert!(
            text.contains("nvidia.com/mig-1g.10gb (1/7 of the compute, 10 GiB)"),
            "{text}"
        );
    }

    #[test]
    fn hami_cores_and_memory() {
        let hami = GpuSharing::Hami {
            gpu_memory_bytes: Some(24 * GIB),
        };
        let r = translate(0.25, None, &hami).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("1"));
        assert_eq!(res(&r, "nvidia.com/gpucores").as_deref(), Some("25"));
        assert_eq!(res(&r, "nvidia.com/gpumem").as_deref(), Some("6144"));
        let r = translate(2.0, None, &hami).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("2"));
        assert_eq!(res(&r, "nvidia.com/gpucores").as_deref(), Some("100"));
    }

    #[test]
    fn kai_annotates() {
        let kai: GpuSharing = serde_json::from_str(r#"{"mode": "kai"}"#).expect("json");
        let r = translate(0.25, None, &kai).expect("ok");
        assert_eq!(r.annotations["gpu-fraction"], "0.25");
        assert!(r.resources.is_empty());
        // KAI places the pod (else nothing enforces the fraction), in a queue.
        assert_eq!(r.scheduler_name.as_deref(), Some("kai-scheduler"));
        assert_eq!(r.labels["kai.scheduler/queue"], "default");
        let kai: GpuSharing =
            serde_json::from_str(r#"{"mode": "kai", "queue": "video"}"#).expect("json");
        let r = translate(0.25, None, &kai).expect("ok");
        assert_eq!(r.labels["kai.scheduler/queue"], "video");
    }

    #[test]
    fn config_deserializes() {
        let s: GpuSharing = serde_json::from_value(serde_json::json!({
            "mode": "time-slicing", "slices": 4, "resource": "nvidia.com/gpu.shared"
        }))
        .expect("time-slicing");
        assert!(matches!(s, GpuSharing::TimeSlicing { slices: 4, .. }));
        let s: GpuSharing = serde_json::from_value(serde_json::json!({
            "mode": "mig", "profiles": [{"resource": "nvidia.com/mig-1g.10gb"}]
        }))
        .expect("mig");
        assert!(matches!(s, GpuSharing::Mig { .. }));
    }

    #[test]
    fn dra_prefers_a_mig_device_then_a_share_of_memory_then_a_whole_gpu() {
        let sharing: GpuSharing =
            serde_json::from_str(r#"{"mode": "dra", "gpuMemoryBytes": 85899345920}"#)
                .expect("json");
        let r = translate(0.25, None, &sharing).expect("ok");
        let claim = r.claim.expect("a claim");
        assert!(r.resources.is_empty(), "{:?}", r.resources);
        let names: Vec<&str> = claim.alternatives.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["mig", "share", "whole"]);
        // A quarter of an 80 GiB GPU: 20 GiB, as the MIG selector and the share.
        let twenty = 20u64 * GIB;
        assert_eq!(
            claim.alternatives[0].selectors,
            [
                format!(
                    r#"device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("{twenty}")) >= 0"#
                ),
                r#"device.capacity["gpu.nvidia.com"].decoders.compareTo(quantity("1")) >= 0"#
                    .to_string(),
            ]
        );
        assert_eq!(claim.alternatives[0].device_class, "mig.nvidia.com");
        assert_eq!(
            claim.alternatives[1].capacity,
            Some(("memory".into(), twenty))
        );
        assert_eq!(claim.alternatives[2].capacity, None);
        // A whole GPU only where it publishes at least that much memory, or none.
        assert_eq!(
            claim.alternatives[2].selectors,
            [format!(
                r#"!("memory" in device.capacity["gpu.nvidia.com"]) || device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("{twenty}")) >= 0"#
            )]
        );
        assert_eq!(claim.memory_bytes, Some(twenty));
        // What was observed wins over the fraction.
        let r = translate(0.25, Some(3 * GIB), &sharing).expect("ok");
        let claim = r.claim.expect("a claim");
        assert_eq!(
            claim.alternatives[1].capacity,
            Some(("memory".into(), 3 * GIB))
        );
        // Above one GPU: whole GPUs, no alternatives.
        let r = translate(2.0, None, &sharing).expect("ok");
        let claim = r.claim.expect("a claim");
        assert_eq!((claim.count, claim.alternatives.len()), (2, 0));
        assert_eq!(claim.memory_bytes, None);
    }

    #[test]
    fn dra_without_a_size_or_mig_class_asks_for_what_it_can_name() {
        let sharing: GpuSharing =
            serde_json::from_str(r#"{"mode": "dra", "migDeviceClass": ""}"#).expect("json");
        let r = translate(0.5, None, &sharing).expect("ok");
        let claim = r.claim.expect("a claim");
        let names: Vec<&str> = claim.alternatives.iter().map(|a| a.name.as_str()).collect();
        // No GPU size and nothing observed: no share can be sized; no MIG class; any
        // whole GPU.
        assert_eq!(names, ["whole"]);
        assert!(claim.alternatives[0].selectors.is_empty());
        assert_eq!(claim.memory_bytes, None);
    }
}
