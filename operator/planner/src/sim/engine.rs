//! The discrete-event core: nodes, instances with cold starts and keep-alive, tasks
//! with dependencies, and a controller (the policy under test) that warms, releases
//! and pins instances.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, VecDeque},
};

use serde::Serialize;

use crate::rng::{LogNormal, Rng};

/// One node of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    pub cpu: f64,
    pub memory_bytes: f64,
    #[serde(default)]
    pub gpus: f64,
}

/// A function as the simulator runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimFunction {
    pub name: String,
    pub cpu: f64,
    pub memory_bytes: f64,
    pub gpu: f64,
    pub cold_start: LogNormal,
    /// Invocations one instance runs at once.
    pub concurrency: u32,
    /// Execution time multiplier with k invocations running (index k - 1); empty: 1.
    pub slowdown: Vec<f64>,
    pub price_per_second: f64,
}

/// One task of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub function: usize,
    /// Tasks of the same request this one waits for.
    pub after: Vec<usize>,
    /// Execution time when alone on its instance (sampled by the workload, so every
    /// policy sees the same work).
    pub exec_seconds: f64,
    /// Dispatch and data passing before it can start, after its inputs are done.
    pub overhead_seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    pub arrival: f64,
    pub tasks: Vec<TaskSpec>,
    /// Which path template (of the controller's) this request follows; free for
    /// controllers to interpret.
    pub kind: usize,
}

/// What a controller asks of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// At `at`, have at least `replicas` instances of the function up or starting.
    Warm {
        at: f64,
        function: usize,
        replicas: u32,
    },
    /// Now: drop instances of the function warmed ahead and never used, and cancel its
    /// pending warm-ups.
    Release { function: usize },
    /// Now: cancel the function's pending warm-ups (a newer schedule replaces them).
    Cancel { function: usize },
    /// Now: keep `count` instances of the function however idle.
    Durable { function: usize, count: u32 },
    /// At `at`, call the controller's `on_wake` with `token`.
    Wake { at: f64, token: usize },
}

/// The policy under test.
pub trait Controller {
    fn on_arrival(&mut self, _now: f64, _request: usize, _spec: &RequestSpec) -> Vec<Command> {
        Vec::new()
    }
    /// A task's inputs are all done: it wants an instance now.
    fn on_task_ready(
        &mut self,
        _now: f64,
        _request: usize,
        _task: usize,
        _spec: &RequestSpec,
    ) -> Vec<Command> {
        Vec::new()
    }
    /// A task began running on an instance (its input and an instance are both there).
    fn on_task_start(
        &mut self,
        _now: f64,
        _request: usize,
        _task: usize,
        _spec: &RequestSpec,
    ) -> Vec<Command> {
        Vec::new()
    }
    /// A wake-up the controller asked for (`Command::Wake`).
    fn on_wake(&mut self, _now: f64, _token: usize) -> Vec<Command> {
        Vec::new()
    }
    /// Called every `interval()` seconds with task arrivals per function since the last call.
    fn on_interval(&mut self, _now: f64, _arrivals: &[u64]) -> Vec<Command> {
        Vec::new()
    }
    fn interval(&self) -> Option<f64> {
        None
    }
}

/// A controller that does nothing: on demand only.
pub struct OnDemand;
impl Controller for OnDemand {}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineConfig {
    /// Idle time before a non-durable instance is removed; None: never.
    pub keep_alive_seconds: Option<f64>,
    /// Extra start-up delay per instance already starting (scaling time S(n) slope).
    pub per_starting_instance_seconds: f64,
    /// Remove idle non-durable instances to make room for a new one.
    pub evict_idle: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            keep_alive_seconds: Some(60.0),
            per_starting_instance_seconds: 0.0,
            evict_idle: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Per request: finish minus arrival.
    pub latencies: Vec<f64>,
    /// Per request: latency minus the sum of its tasks' execution times.
    pub overheads: Vec<f64>,
    /// Per request: the overhead it would have had with its first task's wait as its
    /// only cold start (that wait plus the dispatch overheads of its tasks; exact for
    /// chains, an upper bound for DAGs).
    pub ideal_overheads: Vec<f64>,
    /// Per request: cold starts its tasks waited for.
    pub request_cold_starts: Vec<u32>,
    pub makespan: f64,
    pub cold_starts: u64,
    pub instances_started: u64,
    /// Instance-seconds ready but idle before their first task (pre-warm waste).
    pub idle_before_use: f64,
    /// Instance-seconds ready and idle after a task (keep-alive and durable).
    pub idle_after_use: f64,
    /// Instance-seconds ready and never used at all (part of idle_before_use).
    pub idle_never_used: f64,
    pub cost: f64,
    pub tasks: u64,
    /// Requests that could never finish (their tasks found no room, ever).
    pub unfinished: u64,
}

#[derive(Debug, Clone)]
struct Instance {
    function: usize,
    node: usize,
    ready_at: Option<f64>,
    created: f64,
    active: u32,
    /// Tasks waiting for this instance to become ready.
    attached: Vec<(usize, usize)>,
    idle_since: Option<f64>,
    used: bool,
    durable: bool,
    alive: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Arrival(usize),
    TaskReady(usize, usize),
    InstanceReady(usize),
    TaskDone(usize, usize, usize),
    Started(usize, usize),
    Wake(usize),
    Warm(usize, u32, u64),
    Expire(usize, f64),
    Interval,
}

struct Scheduled {
    at: f64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Earliest first out of a max-heap.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

struct RequestState {
    pending_inputs: Vec<usize>,
    done: usize,
    exec_sum: f64,
    cold: u32,
    finish: f64,
    first_start: Option<f64>,
}

/// Runs requests through the cluster under a controller.
pub struct Engine<'a, C: Controller> {
    functions: &'a [SimFunction],
    requests: &'a [RequestSpec],
    cfg: EngineConfig,
    controller: C,
    free: Vec<(f64, f64, f64)>,
    instances: Vec<Instance>,
    queues: Vec<VecDeque<(usize, usize)>>,
    events: BinaryHeap<Scheduled>,
    seq: u64,
    now: f64,
    rng: Rng,
    warm_generation: Vec<u64>,
    arrivals: Vec<u64>,
    /// Inside start_instance: freed room is for the instance being started.
    starting_one: bool,
    state: Vec<RequestState>,
    out: Outcome,
}

impl<'a, C: Controller> Engine<'a, C> {
    pub fn new(
        nodes: &[NodeSpec],
        functions: &'a [SimFunction],
        requests: &'a [RequestSpec],
        cfg: EngineConfig,
        controller: C,
        seed: u64,
    ) -> Self {
        let state = requests
            .iter()
            .map(|r| RequestState {
                pending_inputs: r.tasks.iter().map(|t| t.after.len()).collect(),
                done: 0,
                exec_sum: r.tasks.iter().map(|t| t.exec_seconds).sum(),
                cold: 0,
                finish: r.arrival,
                first_start: None,
            })
            .collect();
        Engine {
            functions,
            requests,
            cfg,
            controller,
            free: nodes
                .iter()
                .map(|n| (n.cpu, n.memory_bytes, n.gpus))
                .collect(),
            instances: Vec::new(),
            queues: vec![VecDeque::new(); functions.len()],
            events: BinaryHeap::new(),
            seq: 0,
            now: 0.0,
            rng: Rng::new(seed),
            warm_generation: vec![0; functions.len()],
            arrivals: vec![0; functions.len()],
            starting_one: false,
            state,
            out: Outcome::default(),
        }
    }

    fn push(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.events.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            event,
        });
    }

    /// Runs to the last event; returns the measurements and the controller.
    pub fn run(mut self) -> (Outcome, C) {
        for (i, r) in self.requests.iter().enumerate() {
            self.seq += 1;
            self.events.push(Scheduled {
                at: r.arrival,
                seq: self.seq,
                event: Event::Arrival(i),
            });
        }
        if self.controller.interval().is_some() {
            self.push(0.0, Event::Interval);
        }
        let first = self
            .requests
            .iter()
            .map(|r| r.arrival)
            .fold(f64::INFINITY, f64::min);
        while let Some(s) = self.events.pop() {
            self.now = s.at;
            match s.event {
                Event::Arrival(r) => {
                    let cmds = self.controller.on_arrival(self.now, r, &self.requests[r]);
                    self.apply(cmds);
                    for t in 0..self.requests[r].tasks.len() {
                        if self.requests[r].tasks[t].after.is_empty() {
                            self.push(self.now, Event::TaskReady(r, t));
                        }
                    }
                }
                Event::TaskReady(r, t) => {
                    let f = self.requests[r].tasks[t].function;
                    self.arrivals[f] += 1;
                    let cmds = self
                        .controller
                        .on_task_ready(self.now, r, t, &self.requests[r]);
                    self.apply(cmds);
                    self.dispatch(r, t);
                }
                Event::InstanceReady(i) => self.instance_ready(i),
                Event::TaskDone(r, t, i) => self.task_done(r, t, i),
                Event::Wake(token) => {
                    let cmds = self.controller.on_wake(self.now, token);
                    self.apply(cmds);
                }
                Event::Started(r, t) => {
                    let cmds = self
                        .controller
                        .on_task_start(self.now, r, t, &self.requests[r]);
                    self.apply(cmds);
                }
                Event::Warm(f, replicas, generation) => {
                    if generation == self.warm_generation[f] {
                        self.warm(f, replicas);
                    }
                }
                Event::Expire(i, since) => {
                    let inst = &self.instances[i];
                    if inst.alive
                        && !inst.durable
                        && inst.active == 0
                        && inst.idle_since == Some(since)
                    {
                        self.remove(i);
                    }
                }
                Event::Interval => {
                    let arrivals =
                        std::mem::replace(&mut self.arrivals, vec![0; self.functions.len()]);
                    let cmds = self.controller.on_interval(self.now, &arrivals);
                    self.apply(cmds);
                    // Stop when nothing else can happen: work left with no event
                    // pending is stuck (reported as unfinished), not a reason to tick on.
                    let busy = self
                        .state
                        .iter()
                        .zip(self.requests)
                        .any(|(s, r)| s.done < r.tasks.len())
                        && self.events.iter().any(|e| e.event != Event::Interval);
                    if let Some(dt) = self.controller.interval().filter(|_| busy) {
                        self.push(self.now + dt, Event::Interval);
                    }
                }
            }
        }
        // Account for instances still alive at the end (durable ones).
        let end = self.now;
        for i in 0..self.instances.len() {
            if self.instances[i].alive {
                self.now = end;
                self.remove(i);
            }
        }
        let last = self.state.iter().map(|s| s.finish).fold(first, f64::max);
        self.out.makespan = if first.is_finite() { last - first } else { 0.0 };
        for (r, s) in self.state.iter().enumerate() {
            if s.done < self.requests[r].tasks.len() {
                self.out.unfinished += 1;
                continue;
            }
            let lat = s.finish - self.requests[r].arrival;
            self.out.latencies.push(lat);
            self.out.overheads.push(lat - s.exec_sum);
            let dispatch: f64 = self.requests[r]
                .tasks
                .iter()
                .map(|t| t.overhead_seconds)
                .sum();
            let first_wait = s.first_start.map_or(0.0, |f| f - self.requests[r].arrival);
            self.out.ideal_overheads.push(first_wait + dispatch);
            self.out.request_cold_starts.push(s.cold);
        }
        (self.out, self.controller)
    }

    fn apply(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            match c {
                Command::Warm {
                    at,
                    function,
                    replicas,
                } => {
                    let g = self.warm_generation[function];
                    self.push(at, Event::Warm(function, replicas, g));
                }
                Command::Release { function } => {
                    self.warm_generation[function] += 1;
                    let unused: Vec<usize> = (0..self.instances.len())
                        .filter(|&i| {
                            let x = &self.instances[i];
                            x.alive
                                && x.function == function
                                && !x.used
                                && x.attached.is_empty()
                                && !x.durable
                        })
                        .collect();
                    for i in unused {
                        self.remove(i);
                    }
                }
                Command::Cancel { function } => self.warm_generation[function] += 1,
                Command::Durable { function, count } => self.set_durable(function, count),
                Command::Wake { at, token } => self.push(at, Event::Wake(token)),
            }
        }
    }

    fn set_durable(&mut self, f: usize, count: u32) {
        let mut kept = 0;
        for i in 0..self.instances.len() {
            let x = &mut self.instances[i];
            if x.alive && x.function == f {
                if kept < count {
                    x.durable = true;
                    kept += 1;
                } else if x.durable {
                    x.durable = false;
                    if x.active == 0
                        && let Some(since) = x.idle_since
                    {
                        let at = self.now + self.cfg.keep_alive_seconds.unwrap_or(f64::INFINITY);
                        if at.is_finite() {
                            self.push(at, Event::Expire(i, since));
                        }
                    }
                }
            }
        }
        while kept < count {
            match self.start_instance(f) {
                Some(i) => {
                    self.instances[i].durable = true;
                    kept += 1;
                }
                None => break,
            }
        }
    }

    fn warm(&mut self, f: usize, replicas: u32) {
        let have = self
            .instances
            .iter()
            .filter(|x| x.alive && x.function == f && x.active == 0 && x.attached.is_empty())
            .count() as u32;
        for _ in have..replicas {
            if self.start_instance(f).is_none() {
                break;
            }
        }
    }

    fn fits(&self, node: usize, f: &SimFunction) -> bool {
        let (c, m, g) = self.free[node];
        c + 1e-9 >= f.cpu && m + 1e-9 >= f.memory_bytes && g + 1e-9 >= f.gpu
    }

    /// Starts an instance where it fits (evicting idle ephemeral ones if allowed).
    fn start_instance(&mut self, f: usize) -> Option<usize> {
        let functions = self.functions;
        let func = &functions[f];
        let mut node = (0..self.free.len()).find(|&n| self.fits(n, func));
        if node.is_none() && self.cfg.evict_idle {
            // Least recently used idle, non-durable instances first.
            let mut idle: Vec<(f64, usize)> = self
                .instances
                .iter()
                .enumerate()
                .filter(|(_, x)| {
                    x.alive
                        && !x.durable
                        && x.active == 0
                        && x.attached.is_empty()
                        && x.idle_since.is_some()
                })
                .map(|(i, x)| (x.idle_since.unwrap_or(0.0), i))
                .collect();
            idle.sort_by(|a, b| a.0.total_cmp(&b.0));
            self.starting_one = true;
            for (_, i) in idle {
                self.remove(i);
                node = (0..self.free.len()).find(|&n| self.fits(n, func));
                if node.is_some() {
                    break;
                }
            }
            self.starting_one = false;
        }
        let node = node?;
        let n = &mut self.free[node];
        n.0 -= func.cpu;
        n.1 -= func.memory_bytes;
        n.2 -= func.gpu;
        let starting = self
            .instances
            .iter()
            .filter(|x| x.alive && x.ready_at.is_none())
            .count();
        let delay = func.cold_start.sample(&mut self.rng)
            + self.cfg.per_starting_instance_seconds * (starting as f64 + 1.0);
        self.instances.push(Instance {
            function: f,
            node,
            ready_at: None,
            created: self.now,
            active: 0,
            attached: Vec::new(),
            idle_since: None,
            used: false,
            durable: false,
            alive: true,
        });
        let i = self.instances.len() - 1;
        self.out.instances_started += 1;
        self.push(self.now + delay, Event::InstanceReady(i));
        Some(i)
    }

    fn remove(&mut self, i: usize) {
        let now = self.now;
        let functions = self.functions;
        let func = &functions[self.instances[i].function];
        let x = &mut self.instances[i];
        if !x.alive {
            return;
        }
        x.alive = false;
        if let Some(since) = x.idle_since {
            let idle = now - since;
            if x.used {
                self.out.idle_after_use += idle;
            } else {
                self.out.idle_before_use += idle;
                self.out.idle_never_used += idle;
            }
        }
        self.out.cost += func.price_per_second * (now - x.created);
        let n = &mut self.free[x.node];
        n.0 += func.cpu;
        n.1 += func.memory_bytes;
        n.2 += func.gpu;
        if !self.starting_one {
            self.place_queued();
        }
    }

    fn dispatch(&mut self, r: usize, t: usize) {
        let f = self.requests[r].tasks[t].function;
        let conc = self.functions[f].concurrency.max(1);
        // A ready instance with a free slot.
        if let Some(i) = (0..self.instances.len()).find(|&i| {
            let x = &self.instances[i];
            x.alive && x.function == f && x.ready_at.is_some() && x.active < conc
        }) {
            return self.begin(r, t, i);
        }
        // One starting, with a slot not yet promised.
        if let Some(i) = (0..self.instances.len()).find(|&i| {
            let x = &self.instances[i];
            x.alive && x.function == f && x.ready_at.is_none() && (x.attached.len() as u32) < conc
        }) {
            self.instances[i].attached.push((r, t));
            self.state[r].cold += 1;
            self.out.cold_starts += 1;
            return;
        }
        if let Some(i) = self.start_instance(f) {
            self.instances[i].attached.push((r, t));
            self.state[r].cold += 1;
            self.out.cold_starts += 1;
            return;
        }
        self.queues[f].push_back((r, t));
    }

    fn begin(&mut self, r: usize, t: usize, i: usize) {
        self.begin_among(r, t, i, 1);
    }

    /// Starts a task on instance i, with `starting_together - 1` more starting with it
    /// (they share the instance from the start: E(P) at the number running then).
    fn begin_among(&mut self, r: usize, t: usize, i: usize, starting_together: u32) {
        let now = self.now;
        let x = &mut self.instances[i];
        if let Some(since) = x.idle_since.take() {
            let idle = now - since;
            if x.used {
                self.out.idle_after_use += idle;
            } else {
                self.out.idle_before_use += idle;
            }
        }
        x.used = true;
        x.active += 1;
        let functions = self.functions;
        let func = &functions[x.function];
        let running = (x.active + starting_together - 1) as usize;
        let factor = func
            .slowdown
            .get(running.max(1) - 1)
            .or(func.slowdown.last())
            .copied()
            .unwrap_or(1.0);
        let exec = self.requests[r].tasks[t].exec_seconds * factor;
        self.push(now + exec, Event::TaskDone(r, t, i));
        if self.state[r].first_start.is_none() {
            self.state[r].first_start = Some(now);
        }
        self.push(now, Event::Started(r, t));
    }

    fn instance_ready(&mut self, i: usize) {
        if !self.instances[i].alive {
            return;
        }
        self.instances[i].ready_at = Some(self.now);
        self.instances[i].idle_since = Some(self.now);
        let attached = std::mem::take(&mut self.instances[i].attached);
        let mut left = attached.len() as u32;
        for (r, t) in attached {
            self.begin_among(r, t, i, left);
            left -= 1;
        }
        self.pull(i);
        self.maybe_expire(i);
    }

    /// Takes queued tasks of the instance's function while it has free slots.
    fn pull(&mut self, i: usize) {
        let f = self.instances[i].function;
        let conc = self.functions[f].concurrency.max(1);
        while self.instances[i].active < conc {
            let Some((r, t)) = self.queues[f].pop_front() else {
                break;
            };
            self.begin(r, t, i);
        }
    }

    fn maybe_expire(&mut self, i: usize) {
        let x = &self.instances[i];
        if x.active == 0
            && !x.durable
            && let (Some(since), Some(k)) = (x.idle_since, self.cfg.keep_alive_seconds)
        {
            self.push(self.now + k, Event::Expire(i, since));
        }
    }

    fn task_done(&mut self, r: usize, t: usize, i: usize) {
        self.out.tasks += 1;
        let x = &mut self.instances[i];
        x.active -= 1;
        if x.active == 0 {
            x.idle_since = Some(self.now);
        }
        self.pull(i);
        self.maybe_expire(i);
        let s = &mut self.state[r];
        s.done += 1;
        s.finish = s.finish.max(self.now);
        let req = &self.requests[r];
        for (c, task) in req.tasks.iter().enumerate() {
            if task.after.contains(&t) {
                self.state[r].pending_inputs[c] -= 1;
                if self.state[r].pending_inputs[c] == 0 {
                    self.push(self.now + task.overhead_seconds, Event::TaskReady(r, c));
                }
            }
        }
    }

    /// After resources free up, starts instances for queued tasks of any function.
    fn place_queued(&mut self) {
        for f in 0..self.queues.len() {
            while !self.queues[f].is_empty() {
                let starting = self.instances.iter().any(|x| {
                    x.alive
                        && x.function == f
                        && x.ready_at.is_none()
                        && (x.attached.len() as u32) < self.functions[f].concurrency.max(1)
                });
                if starting {
                    break;
                }
                let Some(i) = self.start_instance_no_evict(f) else {
                    break;
                };
                let Some((r, t)) = self.queues[f].pop_front() else {
                    break;
                };
                self.instances[i].attached.push((r, t));
                self.state[r].cold += 1;
                self.out.cold_starts += 1;
            }
        }
    }

    fn start_instance_no_evict(&mut self, f: usize) -> Option<usize> {
        let evict = self.cfg.evict_idle;
        self.cfg.evict_idle = false;
        let i = self.start_instance(f);
        self.cfg.evict_idle = evict;
        i
    }
}
