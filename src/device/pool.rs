//! The daemon's device pool: which running job holds which device. A training job takes a device no other training
//! job holds (one per GPU); evaluation jobs go, up to `daemon.eval_concurrency` per device, to the least busy
//! device. The daemon's dispatch asks [`DevicePool::free_kinds`] what it may claim, takes a [`DevicePool::acquire`]
//! lease for the claimed job and gives it back with [`DevicePool::release`] when the job ends. Pure bookkeeping:
//! no libtorch calls, so its scheduling is tested with any device list.

use std::collections::BTreeMap;

use super::spec::DeviceId;
use crate::job::JobKind;

/// One device of the pool and what the host says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub id: DeviceId,
    /// `cpu`, or the GPU's model name (`NVIDIA H200`), or `unknown`.
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    slot: usize,
    kind: JobKind,
}

#[derive(Debug, Clone)]
pub struct DevicePool {
    slots: Vec<Slot>,
    eval_per_device: usize,
    leases: BTreeMap<String, Lease>,
}

impl DevicePool {
    /// A pool over `slots` (at least one) running up to `eval_per_device` evaluation jobs on each.
    pub fn new(slots: Vec<Slot>, eval_per_device: usize) -> Self {
        assert!(!slots.is_empty(), "a device pool needs a device");
        Self {
            slots,
            eval_per_device: eval_per_device.max(1),
            leases: BTreeMap::new(),
        }
    }

    /// Takes a new `daemon.eval_concurrency` (SIGHUP); running jobs keep their devices.
    pub fn set_eval_per_device(&mut self, n: usize) {
        self.eval_per_device = n.max(1);
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The job kinds a device is free for now, training first.
    pub fn free_kinds(&self) -> Vec<JobKind> {
        [JobKind::Train, JobKind::Eval]
            .into_iter()
            .filter(|&k| self.pick(k).is_some())
            .collect()
    }

    /// Leases a device to `job` of `kind`: the least busy device with room for the kind (fewest jobs, then fewest
    /// training jobs, then the lowest position in the list). `None` when every device is full for the kind. A job
    /// already holding a lease keeps it.
    pub fn acquire(&mut self, job: &str, kind: JobKind) -> Option<&Slot> {
        let slot = match self.leases.get(job) {
            Some(lease) => lease.slot,
            None => {
                let slot = self.pick(kind)?;
                self.leases.insert(job.to_owned(), Lease { slot, kind });
                slot
            }
        };
        Some(&self.slots[slot])
    }

    /// Gives `job`'s device back; the device it held, if it held one.
    pub fn release(&mut self, job: &str) -> Option<&Slot> {
        let lease = self.leases.remove(job)?;
        Some(&self.slots[lease.slot])
    }

    /// The device `job` holds.
    pub fn device_of(&self, job: &str) -> Option<&Slot> {
        self.leases.get(job).map(|l| &self.slots[l.slot])
    }

    /// `(device, job)` for every lease, in device order, then job id.
    pub fn holders(&self) -> Vec<(DeviceId, &str)> {
        let mut out: Vec<(usize, &str)> = self
            .leases
            .iter()
            .map(|(job, l)| (l.slot, job.as_str()))
            .collect();
        out.sort();
        out.into_iter()
            .map(|(s, job)| (self.slots[s].id, job))
            .collect()
    }

    fn count(&self, slot: usize, kind: Option<JobKind>) -> usize {
        self.leases
            .values()
            .filter(|l| l.slot == slot && kind.is_none_or(|k| l.kind == k))
            .count()
    }

    fn pick(&self, kind: JobKind) -> Option<usize> {
        (0..self.slots.len())
            .filter(|&s| match kind {
                JobKind::Train => self.count(s, Some(JobKind::Train)) == 0,
                JobKind::Eval => self.count(s, Some(JobKind::Eval)) < self.eval_per_device,
            })
            .min_by_key(|&s| (self.count(s, None), self.count(s, Some(JobKind::Train)), s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ids: &[DeviceId], evals: usize) -> DevicePool {
        let slots = ids
            .iter()
            .map(|&id| Slot {
                id,
                model: "test".into(),
            })
            .collect();
        DevicePool::new(slots, evals)
    }

    fn take(p: &mut DevicePool, job: &str, kind: JobKind) -> Option<DeviceId> {
        p.acquire(job, kind).map(|s| s.id)
    }

    const GPUS: [DeviceId; 3] = [DeviceId::Cuda(0), DeviceId::Cuda(1), DeviceId::Cuda(2)];

    #[test]
    fn one_training_job_per_gpu() {
        let mut p = pool(&GPUS, 1);
        assert_eq!(take(&mut p, "a", JobKind::Train), Some(DeviceId::Cuda(0)));
        assert_eq!(take(&mut p, "b", JobKind::Train), Some(DeviceId::Cuda(1)));
        assert_eq!(take(&mut p, "c", JobKind::Train), Some(DeviceId::Cuda(2)));
        assert_eq!(take(&mut p, "d", JobKind::Train), None);
        assert_eq!(p.free_kinds(), vec![JobKind::Eval]);
        assert_eq!(p.release("b").map(|s| s.id), Some(DeviceId::Cuda(1)));
        assert_eq!(take(&mut p, "d", JobKind::Train), Some(DeviceId::Cuda(1)));
        assert_eq!(p.release("nobody"), None);
    }

    #[test]
    fn evaluations_spread_and_avoid_busy_gpus() {
        let mut p = pool(&GPUS, 2);
        assert_eq!(take(&mut p, "t", JobKind::Train), Some(DeviceId::Cuda(0)));
        // Idle devices first; at equal load, those not training.
        assert_eq!(take(&mut p, "e1", JobKind::Eval), Some(DeviceId::Cuda(1)));
        assert_eq!(take(&mut p, "e2", JobKind::Eval), Some(DeviceId::Cuda(2)));
        assert_eq!(take(&mut p, "e3", JobKind::Eval), Some(DeviceId::Cuda(1)));
        assert_eq!(take(&mut p, "e4", JobKind::Eval), Some(DeviceId::Cuda(2)));
        // cuda:1 and cuda:2 are full of evaluations: the training GPU takes the rest.
        assert_eq!(take(&mut p, "e5", JobKind::Eval), Some(DeviceId::Cuda(0)));
        assert_eq!(take(&mut p, "e6", JobKind::Eval), Some(DeviceId::Cuda(0)));
        assert_eq!(take(&mut p, "e7", JobKind::Eval), None);
        // A training job still fits where none trains, next to evaluations.
        assert_eq!(take(&mut p, "t2", JobKind::Train), Some(DeviceId::Cuda(1)));
        assert_eq!(p.free_kinds(), vec![JobKind::Train]);
        assert_eq!(
            p.holders(),
            vec![
                (DeviceId::Cuda(0), "e5"),
                (DeviceId::Cuda(0), "e6"),
                (DeviceId::Cuda(0), "t"),
                (DeviceId::Cuda(1), "e1"),
                (DeviceId::Cuda(1), "e3"),
                (DeviceId::Cuda(1), "t2"),
                (DeviceId::Cuda(2), "e2"),
                (DeviceId::Cuda(2), "e4"),
            ]
        );
    }

    #[test]
    fn the_cpu_alone_behaves_as_before_the_pool() {
        // One training job and `eval_concurrency` evaluations, side by side.
        let mut p = pool(&[DeviceId::Cpu], 2);
        assert_eq!(p.free_kinds(), vec![JobKind::Train, JobKind::Eval]);
        assert_eq!(take(&mut p, "t", JobKind::Train), Some(DeviceId::Cpu));
        assert_eq!(take(&mut p, "t2", JobKind::Train), None);
        assert_eq!(take(&mut p, "e1", JobKind::Eval), Some(DeviceId::Cpu));
        assert_eq!(take(&mut p, "e2", JobKind::Eval), Some(DeviceId::Cpu));
        assert!(p.free_kinds().is_empty());
        p.release("t");
        assert_eq!(p.free_kinds(), vec![JobKind::Train]);
    }

    #[test]
    fn a_lease_is_kept_and_limits_follow_reload() {
        let mut p = pool(&GPUS[..2], 1);
        assert_eq!(take(&mut p, "e", JobKind::Eval), Some(DeviceId::Cuda(0)));
        assert_eq!(take(&mut p, "e", JobKind::Eval), Some(DeviceId::Cuda(0)));
        assert_eq!(p.device_of("e").map(|s| s.id), Some(DeviceId::Cuda(0)));
        assert_eq!(take(&mut p, "f", JobKind::Eval), Some(DeviceId::Cuda(1)));
        assert_eq!(take(&mut p, "g", JobKind::Eval), None);
        p.set_eval_per_device(2);
        assert_eq!(take(&mut p, "g", JobKind::Eval), Some(DeviceId::Cuda(0)));
    }
}
