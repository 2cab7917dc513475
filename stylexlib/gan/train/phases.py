"""The phases of a step (NVlabs' G main / G reg / D main / D reg, and the mapping match): each owns which nets train
(``requires_grad``, their optimizers), zero_grad, backward, the gradient all-reduce and the optimizer step; the loss
it minimises is the weighted sum of its registered terms (gan.train.loss_terms)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from stylexlib.gan.losses import weighted_sum
from stylexlib.gan.train.forward import StepContext
from stylexlib.gan.train.loss_terms import loss_weights, phase_terms
from stylexlib.gan.train.schedule import PathSchedule
from stylexlib.gan.train.state import TrainingState

NetsAndOptimizers = list[tuple[nn.Module, torch.optim.Optimizer]]


@dataclass(frozen=True)
class Phase:
    """One optimisation phase: when it is due, what it trains, under which scaler, and the name of its total."""

    name: str
    due: Callable[[StepContext, PathSchedule], bool]
    trains: Callable[[TrainingState, StepContext], NetsAndOptimizers]
    scaler: Callable[[TrainingState], torch.amp.GradScaler]
    autocast: bool = False
    discriminator_trains: bool | None = None  # D.requires_grad_ for the phase (None: as it is)
    total: str | None = None  # the weighted sum is logged under this name too

    def run(self, context: StepContext) -> dict[str, Tensor]:
        """Compute the phase's terms, take one optimizer step per net; the detached terms (and the total)."""
        state = context.state
        if self.discriminator_trains is not None:
            state.D.requires_grad_(self.discriminator_trains)
        with state.autocast() if self.autocast else contextlib.nullcontext():
            terms = phase_terms(self.name, context)
            if not terms:
                return {}
            loss = weighted_sum(terms, loss_weights(state.cfg))
        logged = {self.total: loss, **terms} if self.total else terms
        state.optimize(loss, self.trains(state, context), self.scaler(state))
        return {name: value.detach() for name, value in logged.items()}


def _generator_and_encoder(state: TrainingState, context: StepContext) -> NetsAndOptimizers:
    encoder = [(state.E, state.opt_e)] if context.generated.reconstructions is not None else []
    return [(state.G, state.opt_g), *encoder]


PHASES = (  # in the order a step runs them
    Phase("D", lambda c, s: not c.warming_up, lambda st, c: [(st.D, st.opt_d)], lambda st: st.scaler_d,
          autocast=True, discriminator_trains=True),
    Phase("D_reg", lambda c, s: s.r1_due(c.state.step), lambda st, c: [(st.D, st.opt_d)],
          lambda st: st.full_precision),
    Phase("G", lambda c, s: True, _generator_and_encoder, lambda st: st.scaler_g, autocast=True,
          discriminator_trains=False, total="g"),
    Phase("G_reg", lambda c, s: s.path_length_due(c.state.step), lambda st, c: [(st.G, st.opt_g)],
          lambda st: st.full_precision),
    Phase("mapping", lambda c, s: True, lambda st, c: [(st.G.mapping, st.opt_mapping)], lambda st: st.full_precision),
)


def run_phases(context: StepContext, schedule: PathSchedule) -> dict[str, Tensor]:
    """Every phase due on this step, in order; their detached losses together."""
    losses: dict[str, Tensor] = {}
    for phase in PHASES:
        if phase.due(context, schedule):
            losses.update(phase.run(context))
    return losses
