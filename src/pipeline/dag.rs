//! Which steps may start now. Dependencies always point at earlier steps (validation makes
//! sure), so the graph has no cycle and steps are offered in config order among the ready.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Waiting,
    Running,
    /// Finished, successfully or with an allowed failure: its dependants may start.
    Done,
    /// Failed the build (or was stopped): its dependants never start.
    Failed,
}

pub struct Dag {
    deps: Vec<Vec<usize>>,
    state: Vec<State>,
}

impl Dag {
    pub fn new(deps: Vec<Vec<usize>>) -> Dag {
        let state = vec![State::Waiting; deps.len()];
        Dag { deps, state }
    }

    /// Waiting steps whose dependencies are all done, in config order, at most `room`.
    pub fn ready(&self, room: usize) -> Vec<usize> {
        (0..self.deps.len())
            .filter(|&i| {
                self.state[i] == State::Waiting
                    && self.deps[i].iter().all(|&d| self.state[d] == State::Done)
            })
            .take(room)
            .collect()
    }

    pub fn set(&mut self, i: usize, s: State) {
        self.state[i] = s;
    }

    pub fn state(&self, i: usize) -> State {
        self.state[i]
    }

    pub fn running(&self) -> usize {
        self.state.iter().filter(|s| **s == State::Running).count()
    }

    /// Nothing left that could still run.
    pub fn finished(&self) -> bool {
        self.running() == 0 && self.ready(1).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_job_limit() {
        // 0 and 1 independent, 2 waits for both, 3 for 0 only.
        let mut d = Dag::new(vec![vec![], vec![], vec![0, 1], vec![0]]);
        assert_eq!(d.ready(8), [0, 1]);
        assert_eq!(d.ready(1), [0]);
        d.set(0, State::Running);
        d.set(1, State::Running);
        assert!(d.ready(8).is_empty());
        d.set(0, State::Done);
        assert_eq!(d.ready(8), [3]);
        d.set(1, State::Done);
        assert_eq!(d.ready(8), [2, 3]);
    }

    #[test]
    fn failure_blocks_dependants() {
        let mut d = Dag::new(vec![vec![], vec![0], vec![]]);
        d.set(0, State::Failed);
        assert_eq!(d.ready(8), [2]);
        d.set(2, State::Done);
        assert!(d.finished());
        assert_eq!(d.state(1), State::Waiting);
    }
}
