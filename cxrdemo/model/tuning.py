"""The timed trial spread over a run's epoch boundaries, for data sets too small for a trial before training.

A trial before epoch 1 (model/speed.measure) must fit into a tenth of an epoch; on a few hundred images
it does not, and such runs used to stay in float32. Here instead:
- epoch 1 trains with the reference (float32 contiguous, or the explicit precision contiguous): its own
  steps time it, for free;
- at the end of each epoch (after validation) the candidates not yet timed are timed, in the order
  bfloat16 first, each on a throwaway deep copy of the network and optimiser training a few real batches
  (one warm-up step, then up to TIMED_STEPS), as many as fit into min(EPOCH_FRACTION of that epoch's
  seconds, what is left of MAX_TRIAL_S); random state is saved and restored, so the run's weights and
  draws are those it would have had without the trial;
- the next epoch trains with the fastest measured so far, which must beat the reference by SWITCH_MARGIN
  (a candidate timed by its warm-up step alone is judged by that step, an over-estimate): never slower
  than the reference, and on a small data set with bf16 support usually from epoch 2 on;
- once every candidate is timed (or could not fit even alone into a boundary's budget: given up), the
  answer is remembered under model/speed's key, so the next run with this key uses it from epoch 1.
bfloat16 autocast only touches the forward pass: master weights, Adam state and the saved model stay
float32; a layout switch converts parameters in place, so the optimiser keeps holding them.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch

from cxrdemo.errors import ConfigError
from cxrdemo.model import speed
from cxrdemo.model.speed import Candidate, SpeedChoice

TIMED_STEPS = 3  # after the warm-up step, when the budget allows
SWITCH_MARGIN = 1.05  # a candidate must be at least 5% faster than the reference to replace it


def clock(stepping: Candidate | None) -> float:
    """Seconds now. Told which candidate is stepping (None: validation, set-up), so a test can simulate speeds."""
    return time.perf_counter()


class _Budgeted:
    """The first batches of a loader, each only while the trial's estimate of its step still fits the budget."""

    def __init__(self, loader, trial: InRunTrial, cand: Candidate, start: float, budget: float):
        self.loader, self.trial, self.cand, self.start, self.budget = loader, trial, cand, start, budget
        self.stamps = [start]

    def __len__(self) -> int:
        return 1 + TIMED_STEPS

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i > TIMED_STEPS:
                return
            last = self.stamps[-1] - self.stamps[-2] if len(self.stamps) > 1 else self.trial.estimate(self.cand)
            if self.stamps[-1] - self.start + last > self.budget:
                return
            yield batch

    def report(self, i: int, n: int) -> None:
        self.stamps.append(clock(self.cand))


class InRunTrial:
    """The candidates' step times gathered over the run; `choice` is what the next epoch trains with."""

    def __init__(self, start_choice: SpeedChoice, cands: list[Candidate], key: dict):
        self.cands, self.key, self.reference = cands, key, cands[0]
        self.current = cands[0]
        self.untimed = sorted(cands[1:], key=lambda c: (not c.bf16, c.channels_last))
        self.steps: dict[Candidate, list[float]] = {}  # steady-state step seconds (warm-up excluded)
        self.warmups: dict[Candidate, float] = {}
        self.given_up: list[str] = []
        self.spent, self.budgets, self.costs, self.switched_at = 0.0, [], [], 1  # budgets, costs: per boundary
        self.choice = start_choice
        self._stamps: list[float] = []

    def watch(self, report: Callable[[int, int], None]) -> Callable[[int, int], None]:
        """`report` of the run's training pass, also time-stamping each of its steps."""
        self._stamps = [clock(self.current)]

        def stamped(i: int, n: int) -> None:
            self._stamps.append(clock(self.current))
            report(i, n)
        return stamped

    def estimate(self, cand: Candidate) -> float:
        """What an unseen candidate's step should cost: a timed one of the same arithmetic's, else the reference's."""
        same = [self.figure(c) for c in self.steps if c.bf16 == cand.bf16 and c != self.reference]
        return min(same) if same else statistics.median(self.steps[self.reference])

    def figure(self, cand: Candidate) -> float:
        """A candidate's step seconds: median of its steady steps, else its warm-up step (an over-estimate)."""
        return statistics.median(self.steps[cand]) if self.steps.get(cand) else self.warmups[cand]

    @property
    def finished(self) -> bool:
        return not self.untimed

    def after_epoch(self, epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer, make_loader,
                    inputs, run_steps: Callable) -> SpeedChoice | None:
        """Time what fits into this boundary's budget; the new choice when the next epoch should train otherwise.

        `make_loader()` gives a fresh loader of real training batches, `inputs` the run's batch preparation
        and `run_steps(net, loader, inputs, opt, report, amp)` trains on them (train.train_one_epoch).
        """
        epoch_s = clock(None) - self._stamps[0]  # the training pass and validation
        gaps = [b - a for a, b in zip(self._stamps, self._stamps[1:])]
        if gaps:  # the epoch's first step carries the loader's start and warm-up: left out when there are others
            self.steps.setdefault(self.current, []).extend(gaps[1:] or gaps)
        if self.finished or self.reference not in self.steps:
            return None
        budget = max(0.0, min(speed.EPOCH_FRACTION * epoch_s, speed.MAX_TRIAL_S - self.spent))
        self.budgets.append(round(budget, 4))
        used = 0.0
        while self.untimed and used + self.estimate(self.untimed[0]) <= budget:
            cand = self.untimed.pop(0)
            used += self._time(cand, net, opt, make_loader, inputs, run_steps, budget - used)
        if self.untimed and used == 0.0:
            # Not even one step of it fits into a tenth of an epoch: stop asking, keep what is measured.
            self.given_up += [c.name for c in self.untimed]
            self.untimed = []
        self.spent += used
        self.costs.append(round(used, 4))
        return self._decide(epoch)

    def _time(self, cand: Candidate, net, opt, make_loader, inputs, run_steps, budget: float) -> float:
        with speed._RandomState():
            twin, twin_opt = copy.deepcopy((net, opt))  # one memo: the copied optimiser holds the copied parameters
            twin.to(memory_format=torch.channels_last if cand.channels_last else torch.contiguous_format)
            twin_inputs = copy.copy(inputs)
            twin_inputs.channels_last = cand.channels_last
            if getattr(inputs, "generator", None) is not None:
                twin_inputs.generator = torch.Generator().manual_seed(0)  # the run's augmentation draws stay its own
            start = clock(cand)
            batches = _Budgeted(make_loader(), self, cand, start, budget)
            try:
                run_steps(twin, batches, twin_inputs, twin_opt, batches.report, torch.bfloat16 if cand.bf16 else None)
            except ConfigError:  # e.g. a non-finite loss on the copy: this candidate is not for this run
                self.given_up.append(cand.name)
                return batches.stamps[-1] - start
            finally:
                del twin, twin_opt
        gaps = [b - a for a, b in zip(batches.stamps, batches.stamps[1:])]
        if gaps:
            self.warmups[cand] = gaps[0]
            self.steps[cand] = gaps[1:]
        else:
            self.given_up.append(cand.name)
        return batches.stamps[-1] - start

    def _decide(self, epoch: int) -> SpeedChoice | None:
        ref = self.figure(self.reference)
        timed = [c for c in self.cands if c in self.steps or c in self.warmups]
        best = min(timed, key=self.figure)
        if ref / self.figure(best) < SWITCH_MARGIN:
            best = self.reference
        changed = best != self.current
        if changed:
            self.current, self.switched_at = best, epoch + 1
        step_s = {c.name: self.figure(c) for c in timed}
        done = "" if self.untimed else "measured during the run"
        self.choice = SpeedChoice(best.bf16, best.channels_last, done or "measuring during the run",
                                  ref / self.figure(best), self.reference.name, step_s, self.spent,
                                  sum(self.budgets), self.key.get("device_model", ""), epoch=self.switched_at,
                                  given_up=list(self.given_up))
        if done:
            speed.remember(self.key, self.choice)
        return self.choice if changed or done else None


def start(how: SpeedChoice) -> InRunTrial | None:
    """The in-run trial when the trial before training did not fit (a small data set), else None."""
    if how.source != speed.PENDING:
        return None
    return InRunTrial(how, speed.candidates_for(how.key), how.key)


def tune(backbone: str, img_size: int, freeze: str, *, batch_size: int, precision: str = "auto", threads: int = 0,
         max_s: float = 60.0) -> SpeedChoice:
    """Fill the answer cache explicitly (`python -m cxrdemo tune`): time the candidates now, as a run would need.

    The key is the one `train.fit` asks for (this machine, threads, frozen groups of epoch 1), so the next
    run with this backbone, size, batch and freeze level uses the answer from epoch 1 without any trial.
    """
    from cxrdemo.model import backbones
    from cxrdemo.model.device import choose_device, set_threads

    set_threads(threads)
    device = choose_device()
    net = backbones.build_backbone(backbone, 2, init="scratch")  # speed does not depend on the weights' values
    net.set_freeze(backbones.frozen_groups(freeze, backbone, 1))
    key = speed.trial_key(device, backbone, img_size, batch_size, net.n_frozen, precision)
    choice = speed.measure(net, device, speed.candidates(precision, device), batch_size, img_size, 2,
                           batches_per_epoch=10 ** 9, max_s=max_s)  # no epoch to keep a tenth of: max_s bounds it
    if choice.source == "measured":
        speed.remember(key, choice)
    return choice
