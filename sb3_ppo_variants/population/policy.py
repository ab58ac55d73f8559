"""K actor-critics of SB3's ``MlpPolicy`` shape, their parameters stacked into one (K, P) tensor, and one Adam
over it with a learning rate, a step count and a gradient clipping norm per member.

Members go in and out of a population by their ``ActorCriticPolicy.state_dict()`` names and shapes
(:meth:`StackedActorCritic.member_state_dict`, :meth:`StackedActorCritic.from_member_layout`).
Adam and per-member gradient clipping are elementwise or per member: stacking changes no member's mathematics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_ppo_variants.population.distributions import StackedDistribution

__all__ = ["StackedActorCritic", "StackedAdam"]


_FUNCTIONS: dict[type, Callable[[th.Tensor], th.Tensor]] = {th.nn.Tanh: th.tanh, th.nn.ReLU: th.relu}
#: a member's row of the stacked parameters is padded to a multiple of this many entries (64 bytes of float32)
_ROW_ALIGNMENT = 16


def _layers(sequential: th.nn.Module, prefix: str) -> list[tuple[str, Any]]:
    """("linear", parameter name prefix) or ("activation", function) for each layer of an MLP."""
    layers: list[tuple[str, Any]] = []
    for index, module in enumerate(sequential.children()):
        if isinstance(module, th.nn.Linear):
            layers.append(("linear", f"{prefix}.{index}"))
        elif next(module.parameters(), None) is None:
            layers.append(("activation", _FUNCTIONS.get(type(module), module)))
        else:
            raise ValueError(f"policy layer {prefix}.{index} ({type(module).__name__}) is not supported in a population")
    return layers


class StackedActorCritic:
    """The members' policies as one (K, P) parameter tensor with a batched forward pass.

    Each member's parameters lie in one row (zero-padded to a multiple of 16 entries), in the order of
    ``ActorCriticPolicy.named_parameters()``; a Linear's weight is stored transposed, (in, out), so the forward pass is
    ``baddbmm(bias, x, weight)`` without copies.
    One tensor makes Adam and the per-member gradient clipping a handful of operations, whatever the depth.

    :param policies: one SB3 ``ActorCriticPolicy`` per member, all of the same architecture (MlpPolicy, no gSDE)
    :param distribution: the stacked action distribution of their action space
    :param device: where the stacked tensors live
    """

    def __init__(self, policies: list[ActorCriticPolicy], distribution: StackedDistribution, device: th.device):
        named = [dict(policy.named_parameters()) for policy in policies]
        self.names = list(named[0])
        # name -> (offset, size, stored shape, whether stored transposed)
        self.layout: dict[str, tuple[int, int, tuple[int, ...], bool]] = {}
        offset = 0
        for name in self.names:
            shape = tuple(named[0][name].shape)
            transposed = name.endswith(".weight") and len(shape) == 2
            size = int(np.prod(shape))
            self.layout[name] = (offset, size, (shape[1], shape[0]) if transposed else shape, transposed)
            offset += size
        # Each row padded with zeros to a multiple of 64 bytes: every member's row then starts on the same alignment and
        # no member's entries fall in the scalar tail of a vectorised kernel (whose rounding may differ from the
        # vector body's, e.g. where the body fuses a multiply-add), so elementwise updates round alike for any K.
        self.row_size = -(-offset // _ROW_ALIGNMENT) * _ROW_ALIGNMENT
        # the sizes that split a row into its parameters (and the padding): see _views
        self._split_sizes = [size for _, size, _, _ in self.layout.values()] + [self.row_size - offset]
        self.n_members = len(policies)
        self.flat = th.stack([self.from_member_layout(member) for member in named]).to(device).requires_grad_(True)
        with th.no_grad():
            self._frozen = self._views(self.flat)  # share the storage: they see every update
        template = policies[0]
        self.pi_layers = _layers(template.mlp_extractor.policy_net, "mlp_extractor.policy_net")
        self.vf_layers = _layers(template.mlp_extractor.value_net, "mlp_extractor.value_net")
        self.distribution = distribution
        self.device = device

    def _views(self, flat: th.Tensor) -> dict[str, th.Tensor]:
        # One split rather than a slice per parameter: its backward writes the gradient row once (a concatenation),
        # where each slice's backward filled a (K, P) tensor of zeros and autograd summed them all (the same values).
        parts = flat.split(self._split_sizes, dim=1)
        return {name: part.view(flat.shape[0], *stored) for (name, (_, _, stored, _)), part in zip(self.layout.items(), parts)}

    @property
    def params(self) -> dict[str, th.Tensor]:
        """The stacked parameters by name, (K, *stored shape) views without gradient (weights as (K, in, out))."""
        return self._views(self.flat.detach())

    def parameters(self) -> list[th.Tensor]:
        return [self.flat]

    def from_member_layout(self, tensors: Mapping[str, th.Tensor] | list[th.Tensor]) -> th.Tensor:
        """One member's row (P,) from tensors shaped as in its ``ActorCriticPolicy`` (by name or in order)."""
        values = tensors if isinstance(tensors, list) else [tensors[name] for name in self.names]
        parts = []
        for name, value in zip(self.names, values):
            value = value.detach()
            parts.append((value.t() if self.layout[name][3] else value).reshape(-1))
        row = th.cat(parts)
        return th.cat([row, row.new_zeros(self.row_size - row.numel())])

    def to_member_layout(self, row: th.Tensor) -> dict[str, th.Tensor]:
        """Tensors shaped as in the member's ``ActorCriticPolicy`` from its row (P,) (CPU copies)."""
        result = {}
        for name, (offset, size, stored, transposed) in self.layout.items():
            value = row[offset : offset + size].detach().reshape(stored)
            result[name] = (value.t() if transposed else value).cpu().clone(memory_format=th.contiguous_format)
        return result

    def _linear(self, x: th.Tensor, params: dict[str, th.Tensor], name: str) -> th.Tensor:
        # x (K, batch, in) @ weight (K, in, out) + bias (K, 1, out)
        weight, bias = params[f"{name}.weight"], params[f"{name}.bias"].unsqueeze(1)
        if weight.shape[-1] == 1:
            # A one-column product (a value head, a 1-d action) goes to a matrix-vector kernel whose rounding depends
            # on K (K=1 differed from K=8 in probes); with a column of zeros beside it, it is a matrix product as the
            # other layers' (an elementwise product summed over rows, the former way, took 1.5x as long, backward incl.)
            padded = th.cat([weight, th.zeros_like(weight)], dim=2)
            return th.baddbmm(bias, x, padded)[..., :1]
        return th.baddbmm(bias, x, weight)

    def _mlp(self, x: th.Tensor, params: dict[str, th.Tensor], layers: list[tuple[str, Any]]) -> th.Tensor:
        for kind, item in layers:
            x = self._linear(x, params, item) if kind == "linear" else item(x)
        return x

    def _current(self) -> dict[str, th.Tensor]:
        return self._views(self.flat) if th.is_grad_enabled() else self._frozen

    @property
    def widest(self) -> int:
        """The most units of any layer (a member's largest activation per row)."""
        return max(stored[-1] for name, (_, _, stored, _) in self.layout.items() if name.endswith(".weight"))

    def forward(self, observations: th.Tensor, flat: th.Tensor | None = None) -> tuple[th.Tensor, th.Tensor]:
        """Distribution parameters (K, batch, d) and values (K, batch) for observations (K, batch, obs_dim).

        :param flat: the members' rows to use, (K', P) for observations (K', batch, obs_dim) (default: all of them, as
            they are now)
        """
        params = self._current() if flat is None else self._views(flat)
        latent_pi = self._mlp(observations, params, self.pi_layers)
        latent_vf = self._mlp(observations, params, self.vf_layers)
        action_out = self._linear(latent_pi, params, "action_net")
        values = self._linear(latent_vf, params, "value_net").squeeze(-1)
        return self.distribution.params(action_out, params.get("log_std")), values

    def values(self, observations: th.Tensor) -> th.Tensor:
        """Values (K, batch) only."""
        params = self._current()
        return self._linear(self._mlp(observations, params, self.vf_layers), params, "value_net").squeeze(-1)

    def member_state_dict(self, k: int) -> dict[str, th.Tensor]:
        """Member k's parameters, named and shaped as in its ``ActorCriticPolicy`` (copies on the CPU)."""
        return self.to_member_layout(self.flat[k])


class StackedAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) over stacked parameters, with per-member learning
    rates and step counts, preceded by per-member gradient-norm clipping (``clip_grad_norm_``'s formula).

    Members whose ``active`` flag is off (stopped early by ``target_kl``, or failed) are left untouched, state
    included; so is a member whose step would make its parameters non-finite.

    :param params: the stacked tensors, each (K, ...)
    :param betas: Adam's betas (SB3's defaults)
    :param eps: Adam's eps (SB3's ActorCriticPolicy uses 1e-5)
    """

    def __init__(self, params: list[th.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-5):
        self.params = params
        self.betas = betas
        self.eps = eps
        n_members = params[0].shape[0]
        self.step_count = th.zeros(n_members, dtype=th.float64, device=params[0].device)
        self.exp_avg = [th.zeros_like(p) for p in params]
        self.exp_avg_sq = [th.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @th.no_grad()
    def clip_grad_norm(self, max_norm: th.Tensor, grads: list[th.Tensor] | None = None) -> th.Tensor:
        """Scale each member's gradient to a norm of at most ``max_norm`` (K,); returns the norms before.

        As ``clip_grad_norm_``: the norm of the parameters' norms, scaled by ``min(max_norm / (norm + 1e-6), 1)``.

        :param grads: the gradients to clip, (K', ...) each, with ``max_norm`` (K',) (default: the parameters' ``grad``)
        """
        grads = [p.grad for p in self.params if p.grad is not None] if grads is None else grads
        norms = [th.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads]
        total = norms[0] if len(norms) == 1 else th.linalg.vector_norm(th.stack(norms), dim=0)
        scale = th.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
        return total

    @th.no_grad()
    def step(
        self,
        lr: th.Tensor,
        active: th.Tensor | None = None,
        members: slice = slice(None),
        grads: list[th.Tensor] | None = None,
    ) -> th.Tensor:
        """One Adam step with learning rates ``lr`` (K,), for the members where ``active`` (K,) is true and the step
        gives finite parameters; the others are left untouched, state included.

        Every member goes through the same operations whoever steps (``th.where`` picks per member), so a member's
        numbers do not depend on its companions' flags.

        :param members: step only these members (rows of every tensor); ``lr`` and ``active`` are then theirs, (K',)
        :param grads: their gradients, one (K', ...) per parameter (default: the parameters' ``grad``)
        :return: (K',) bool, the members that stepped
        """
        beta1, beta2 = self.betas
        dtype = self.params[0].dtype
        step_count = self.step_count[members]
        params, exp_avgs, exp_avg_sqs = ([t[members] for t in ts] for ts in (self.params, self.exp_avg, self.exp_avg_sq))
        if grads is None:
            grads = [th.zeros_like(view) if p.grad is None else p.grad[members] for p, view in zip(self.params, params)]
        mask = th.ones_like(step_count, dtype=th.bool) if active is None else active
        step = (step_count + 1).clamp(min=1)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        # Adam's p - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with sqrt(bc2) moved out of the elementwise work:
        # p - (lr sqrt(bc2) / bc1) * m / (sqrt(v) + eps sqrt(bc2)), two passes fewer over the parameters
        step_size = (lr.to(th.float64) * bias_correction2_sqrt / bias_correction1).to(dtype)
        eps = (self.eps * bias_correction2_sqrt).to(dtype)
        updates = []
        for p, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
            shape = (-1, *([1] * (p.dim() - 1)))
            new_avg = exp_avg.lerp(grad, 1 - beta1)
            new_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = new_sq.sqrt().add_(eps.view(shape))
            new_p = th.addcdiv(p, new_avg * -step_size.view(shape), denom)
            # finite iff its least and greatest values are (amin and amax propagate NaN): two reductions that write
            # nothing (aminmax, one pass, took 16x as long here)
            rows = new_p.reshape(p.shape[0], -1)
            mask = mask & th.isfinite(rows.amin(dim=1)) & th.isfinite(rows.amax(dim=1))
            updates.append((p, exp_avg, exp_avg_sq, new_p, new_avg, new_sq))
        if mask.device.type == "cpu" and bool(mask.all()):
            # Every member steps (the common case): plain copies, and the fresh moments themselves when they replace
            # whole tensors -- the same values as th.where's. Reading the flags is no device round trip on the CPU.
            whole = step_count.shape[0] == self.step_count.shape[0]
            for i, (p, exp_avg, exp_avg_sq, new_p, new_avg, new_sq) in enumerate(updates):
                p.copy_(new_p)
                if whole:
                    self.exp_avg[i], self.exp_avg_sq[i] = new_avg, new_sq
                else:
                    exp_avg.copy_(new_avg)
                    exp_avg_sq.copy_(new_sq)
        else:
            for p, exp_avg, exp_avg_sq, new_p, new_avg, new_sq in updates:
                keep = mask.view(-1, *([1] * (p.dim() - 1)))
                th.where(keep, new_p, p, out=p)
                th.where(keep, new_avg, exp_avg, out=exp_avg)
                th.where(keep, new_sq, exp_avg_sq, out=exp_avg_sq)
        step_count += mask.to(step_count.dtype)  # a view: the members' own counts
        return mask

    def member_state(self, k: int) -> dict[str, Any]:
        """Member k's Adam state: its step count and moment estimates, one (CPU) tensor per stacked parameter."""
        return {
            "step": float(self.step_count[k]),
            "exp_avg": [m[k].detach().cpu().clone() for m in self.exp_avg],
            "exp_avg_sq": [v[k].detach().cpu().clone() for v in self.exp_avg_sq],
        }

    def load_member_state(self, k: int, state: dict[str, Any]) -> None:
        """Set member k's Adam state (as :meth:`member_state` gives it)."""
        with th.no_grad():
            self.step_count[k] = state["step"]
            for m, value in zip(self.exp_avg, state["exp_avg"]):
                m[k].copy_(value)
            for v, value in zip(self.exp_avg_sq, state["exp_avg_sq"]):
                v[k].copy_(value)

    def state(self) -> dict[str, Any]:
        """Everything the optimiser learned (CPU copies), for saving."""
        return {
            "step": self.step_count.cpu(),
            "exp_avg": [m.cpu() for m in self.exp_avg],
            "exp_avg_sq": [v.cpu() for v in self.exp_avg_sq],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        with th.no_grad():
            self.step_count.copy_(state["step"])
            for mine, saved in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
                mine.copy_(saved)
