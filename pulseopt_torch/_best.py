"""The parameters at the best held-out loss, kept for ``restore_best=True``.

One copy of the parameters, allocated when the wrapper is built, overwritten
in place whenever `AEES.observe_eval` reports a new best, and copied back into
the parameters by `AEES.finalize`. For `DTensor` parameters (FSDP2, tensor
parallel) it holds each rank's local shards, copied without communication.
"""

from __future__ import annotations

import torch

from pulseopt_torch._sharding import local


class BestParams:
    """A copy of the optimizer's parameters at the best eval loss seen."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        self._copies = [torch.empty_like(p) for p in self._params()]
        self._holds = False

    def _params(self) -> list[torch.Tensor]:
        """The local shards of the optimizer's parameters."""
        return [
            local(p).detach() for group in self._optimizer.param_groups for p in group["params"]
        ]

    @property
    def holds(self) -> bool:
        """Whether a best copy was taken (or loaded)."""
        return self._holds

    @torch.no_grad()
    def take(self) -> None:
        """Copy the current parameters (parameters added since construction join here)."""
        params = self._params()
        if len(params) != len(self._copies):
            self._copies = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._copies, params)
        self._holds = True

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the best parameters back in place (nothing happens before a `take`)."""
        if self._holds:
            torch._foreach_copy_(self._params(), self._copies)

    def state_dict(self) -> list[torch.Tensor] | None:
        """The copies, or ``None`` before the first `take`."""
        return [c.clone() for c in self._copies] if self._holds else None

    def checked(self, saved: object) -> list[torch.Tensor] | None:
        """``saved`` (from `state_dict`) if it fits these parameters.

        Raises:
          ValueError: naming the mismatch.
        """
        if saved is None:
            return None
        params = self._params()
        if not isinstance(saved, (list, tuple)) or not all(
            isinstance(t, torch.Tensor) for t in saved
        ):
            raise ValueError("state_dict entry 'best_params' must be a list of tensors or None.")
        if len(saved) != len(params) or any(
            s.shape != p.shape or s.dtype != p.dtype for s, p in zip(saved, params, strict=True)
        ):
            raise ValueError(
                "state_dict entry 'best_params' does not match this optimizer's parameters."
            )
        return list(saved)

    @torch.no_grad()
    def load(self, saved: list[torch.Tensor] | None) -> None:
        """Take over copies returned by `checked` (cannot fail)."""
        if saved is None:
            self._holds = False
            return
        self._copies = [torch.empty_like(p) for p in self._params()]
        torch._foreach_copy_(
            self._copies, [s.to(c.device) for s, c in zip(saved, self._copies, strict=True)]
        )
        self._holds = True
