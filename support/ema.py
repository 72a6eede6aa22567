"""Weight averaging: an exponential moving average (EMA) of the weights, evaluated and saved as "best".

Read this when you set ema_decay in Model_Params.py. After every optimizer step the average moves a
little toward the current weights: average = decay · average + (1 - decay) · weights. It follows
training with a lag of about 1 / (1 - decay) steps and smooths out the noise of the last steps,
which on a small text often predicts held-out text a little better than the weights themselves.
Training itself never sees the average; evaluations and weights-best.pth use it, and
weights-latest.pth stores it beside the weights, so a resumed run continues it exactly.
"""
from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    """The moving average of a model's weights (float32, on the model's device)."""

    def __init__(self, model: torch.nn.Module, decay: float, saved: dict | None = None):
        """Starts at the model's weights, or at `saved` (a state_dict() of an earlier run)."""
        self.decay = decay
        start = saved["average"] if saved is not None else model.state_dict()
        self.average = {name: t.detach().clone().float() for name, t in start.items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, t in model.state_dict().items():
            self.average[name].lerp_(t.float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The model holds the averaged weights inside the block, its own weights again after."""
        own = {name: t.detach().clone() for name, t in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "average": self.average}


def averaged(average: WeightAverage | None, model: torch.nn.Module):
    """A block in which `model` holds the weights to evaluate: the average if there is one."""
    return average.swapped_in(model) if average is not None else contextlib.nullcontext()
