"""Which pipeline the next trial measures: never one a trial has measured (or is measuring).

Optuna's samplers draw parameters and know nothing of pipelines. On a space of a few dozen
categorical pipelines TPE soon proposes the best measured ones again, and every such proposal
was a trial of its own: a rerun of cached stages that told the search nothing new. So the
sampler here decides the whole pipeline when a trial starts (before_trial) and hands out its
parameters one by one:
- a space that holds no more pipelines than the trials asked for is enumerated: each pipeline
  once, those with the fewest training stages first (the cheapest information, which matters
  under --time-budget);
- a larger space is sampled by TPE, fitted on the finished trials in a scratch copy of the study;
  a proposal of a pipeline taken already is drawn again, and after a few such draws (TPE has
  settled there) the next pipeline is an untried one picked at random.
The plan is stored on the trial at once, so that other workers on the same storage skip it."""

from __future__ import annotations

import random
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from .schedule import training_stages
from .space import Pipeline, SearchSpace

PLAN_ATTR = "planned_params"
# Proposals TPE gets before an untried pipeline is picked at random instead.
TPE_DRAWS = 20
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def tpe_sampler(seed: int, trials: int) -> optuna.samplers.TPESampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group=True: conditional parameters (recovery only after pruning, ...) get their own
        # joint model instead of falling back to independent sampling.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=max(4, min(10, trials // 2)))


class PipelineSampler(optuna.samplers.BaseSampler):
    """Plans each new trial's pipeline among those no trial has taken (see the module's text).
    `worker`: this process's index among local workers, so that workers starting together
    begin on different pipelines."""

    def __init__(self, space: SearchSpace, seed: int, trials: int, worker: int = 0) -> None:
        self.space, self.seed, self.trials, self.worker = space, seed, trials, worker
        self.grid = space.size() <= trials
        self.planned: set[Pipeline] = set()  # by this process, failed ones included
        self.plans: dict[int, dict[str, Any]] = {}  # trial id -> its parameters
        self.rng = random.Random(seed)

    def untried(self, study: optuna.Study) -> list[Pipeline]:
        """Pipelines of the space no trial took (a failed one from an earlier run is free
        again), fewest training stages first."""
        taken = self.planned | {p for t in study.get_trials(deepcopy=False, states=TAKEN)
                                if (p := self.pipeline_of(t)) is not None}
        free = [p for p in self.space.pipelines() if p not in taken]
        return sorted(free, key=training_stages)

    def pipeline_of(self, trial: FrozenTrial) -> Pipeline | None:
        given = trial.user_attrs.get("pipeline")
        if isinstance(given, dict):
            return Pipeline(**given)
        params = (trial.system_attrs.get("fixed_params") or trial.system_attrs.get(PLAN_ATTR)
                  or trial.params)
        return self.space.from_params(params) if params else None

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.system_attrs.get("fixed_params"):
            return  # an enqueued trial (an anchor) brings its own parameters
        free = self.untried(study)
        if not free:
            return  # the caller stops once nothing is left (exhausted); TPE fills in
        pipeline = self._next(study, free)
        self.planned.add(pipeline)
        params = self.space.params(pipeline)
        self.plans[trial._trial_id] = params  # noqa: SLF001 - the id Optuna gives samplers
        study._storage.set_trial_system_attr(trial._trial_id, PLAN_ATTR, params)  # noqa: SLF001

    def _next(self, study: optuna.Study, free: list[Pipeline]) -> Pipeline:
        if self.grid:
            cheapest = [p for p in free if training_stages(p) == training_stages(free[0])]
            return cheapest[self.worker % len(cheapest)]
        finished = study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED))
        scratch = optuna.create_study(directions=study.directions,
                                      sampler=tpe_sampler(self.seed + len(finished), self.trials))
        scratch.add_trials(finished)
        for _ in range(TPE_DRAWS):
            proposal = scratch.ask()
            pipeline = self.space.suggest(proposal)
            if pipeline in free:
                return pipeline
            scratch.tell(proposal, state=TrialState.FAIL)
        return self.rng.choice(free)

    def exhausted(self, study: optuna.Study) -> bool:
        """Nothing left to run: every pipeline taken, and no enqueued trial waits."""
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        return not waiting and not self.untried(study)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self.plans.get(trial._trial_id, {})  # noqa: SLF001
        if param_name in plan:
            return plan[param_name]
        # Nothing planned (every pipeline taken): any valid value; the trial is a repeat, which
        # the objective marks and does not count.
        return optuna.samplers.RandomSampler(seed=self.rng.randrange(2**31)).sample_independent(
            study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.plans.pop(trial._trial_id, None)  # noqa: SLF001
