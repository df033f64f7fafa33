//! GPU memory and utilisation through NVML, loaded at run time: the same binary runs
//! on nodes without a GPU, where this says why there are no GPU figures.

use nvml_wrapper::Nvml;

pub struct GpuProbe {
    nvml: Nvml,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSample {
    pub devices: u32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Mean over the visible devices, 0..1.
    pub utilization: f64,
}

impl GpuProbe {
    pub fn open() -> Result<Self, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable: {e}"))?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        if count == 0 {
            return Err("NVML found no GPU".into());
        }
        Ok(Self { nvml })
    }

    pub fn sample(&self) -> Result<GpuSample, String> {
        let count = self.nvml.device_count().map_err(|e| e.to_string())?;
        let mut sample = GpuSample {
            devices: count,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            utilization: 0.0,
        };
        for index in 0..count {
            let device = self
                .nvml
                .device_by_index(index)
                .map_err(|e| e.to_string())?;
            let memory = device.memory_info().map_err(|e| e.to_string())?;
            sample.memory_used_bytes += memory.used;
            sample.memory_total_bytes += memory.total;
            let rates = device.utilization_rates().map_err(|e| e.to_string())?;
            sample.utilization += f64::from(rates.gpu) / 100.0;
        }
        if count > 0 {
            sample.utilization /= f64::from(count);
        }
        Ok(sample)
    }
}
