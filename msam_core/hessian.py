"""Curvature of the loss through Hessian-vector products: top eigenvalue and trace.

The Hessian ``H = d²ℓ/dθ²`` of the mean loss on a batch is never formed: one forward and one
backward with ``create_graph=True`` give ``g = ∇ℓ``, and each product ``Hv = ∇(g·v)`` is one
more backward through that graph (one "HVP").  Blocks: restricting ``θ`` to one modality's
encoder parameters gives the diagonal block ``H_mm`` (the curvature seen by that encoder alone).

All measures run the model in eval mode (batch norm uses its running statistics, dropout is
off), restore the model's mode afterwards, leave ``.grad`` untouched, and draw their random
vectors from a ``torch.Generator`` (seed 0 unless given) so they never consume the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from msam_core.coalitions import eval_mode
from msam_core.param_groups import has_modality_groups, modality_parameter_groups

LossFn = Callable[[Tensor, Tensor], Tensor]
METHODS = ("lanczos", "power")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters measures are taken over by default: those with ``requires_grad``."""
    return [p for p in model.parameters() if p.requires_grad]


def _random_vector(
    kind: str, shape: Sequence[int], generator: torch.Generator, like: Tensor
) -> Tensor:
    """Random vector drawn on the generator's device, returned on ``like``'s device/dtype."""
    gen_device = generator.device
    if kind == "normal":
        v = torch.randn(*shape, generator=generator, device=gen_device, dtype=like.dtype)
    else:  # Rademacher: ±1 with equal probability
        v = torch.randint(0, 2, tuple(shape), generator=generator, device=gen_device)
        v = v.to(like.dtype) * 2 - 1
    return v.to(like.device)


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


class HessianOperator:
    """``v -> H v`` for the loss of ``model`` on one batch, over a list of parameters.

    Builds the gradient graph once (one forward + one backward); each call of :meth:`matvec`
    costs one backward and is counted in ``n_hvp``.  :meth:`block` gives the operator of a
    diagonal block ``H_bb`` (a sub-list of the parameters) that reuses the same graph.
    Vectors are flat: ``[n]`` (or ``[k, n]`` for ``k`` products at once), in the order of
    ``params``.
    """

    def __init__(self, params: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> None:
        if not params:
            raise ValueError("no parameters to take the Hessian over (empty params list)")
        self.params = list(params)
        self.grads = list(grads)
        self.numel = sum(p.numel() for p in self.params)
        self.n_hvp = 0

    @classmethod
    def from_loss(
        cls,
        model: nn.Module,
        inputs: Mapping[str, Tensor],
        targets: Tensor,
        params: Iterable[nn.Parameter] | None = None,
        loss_fn: LossFn = F.cross_entropy,
    ) -> HessianOperator:
        """Operator of ``loss_fn(model(inputs), targets)`` over ``params`` (all trainable)."""
        params = list(params) if params is not None else trainable_parameters(model)
        if not params:
            raise ValueError("no parameters to take the Hessian over (empty params list)")
        loss = loss_fn(model(inputs), targets)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        # A parameter the loss ignores has zero gradient and zero curvature.
        grads = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)
        ]
        return cls(params, grads)

    def block(self, params: Sequence[nn.Parameter]) -> HessianOperator:
        """Operator of the diagonal block over ``params`` (a subset of this operator's)."""
        index = {id(p): i for i, p in enumerate(self.params)}
        missing = [p for p in params if id(p) not in index]
        if missing:
            raise ValueError(f"{len(missing)} block parameters are not among the operator's")
        return HessianOperator(params, [self.grads[index[id(p)]] for p in params])

    def _split(self, v: Tensor) -> list[Tensor]:
        lead = v.shape[:-1]
        chunks = torch.split(v, [p.numel() for p in self.params], dim=-1)
        return [c.reshape(*lead, *p.shape) for c, p in zip(chunks, self.params, strict=True)]

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat ``v`` ``[n]``, or ``[k, n]`` -> ``[k, n]`` (k products).

        ``Hv = ∂(g·v)/∂θ`` is the vector-Jacobian product of the gradient with ``v``; a
        ``[k, n]`` batch is one vmapped backward (``is_grads_batched``).
        """
        batched = v.ndim == 2
        lead = [v.shape[0]] if batched else []
        pieces = self._split(v.detach())
        # Gradients that do not depend on the parameters (loss linear in them) add nothing.
        live = [i for i, g in enumerate(self.grads) if g.requires_grad]
        hv: list[Tensor | None] = [None] * len(self.params)
        if live:
            hv = torch.autograd.grad(
                [self.grads[i] for i in live],
                self.params,
                grad_outputs=[pieces[i] for i in live],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=batched,
            )
        hv = [
            h.reshape(*lead, -1) if h is not None else v.new_zeros(*lead, p.numel())
            for h, p in zip(hv, self.params, strict=True)
        ]
        self.n_hvp += v.shape[0] if batched else 1
        return torch.cat(hv, dim=-1).detach()


def _check_tol(tol: float, max_iter: int) -> None:
    if not tol > 0:
        raise ValueError(f"tol must be > 0 (a relative tolerance), got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")


def power_iteration(
    op: HessianOperator, tol: float, max_iter: int, generator: torch.Generator
) -> tuple[float, int]:
    """Dominant eigenvalue (largest in magnitude) by power iteration.

    Stops when the residual of the Rayleigh quotient ``λ = vᵀHv`` (``‖v‖ = 1``) is within
    ``tol`` relative: ``‖Hv − λv‖ ≤ tol·|λ|``, which puts an eigenvalue of the symmetric ``H``
    within ``tol·|λ|`` of ``λ``.  (A stop on the relative change of ``λ`` between iterations
    ends early, e.g. 7 % low, when the top eigenvalues are close and progress is slow.)
    Returns ``(eigenvalue, number of HVPs)``; after ``max_iter`` HVPs the last estimate.
    """
    _check_tol(tol, max_iter)
    start = op.n_hvp
    v = _random_vector("normal", [op.numel], generator, op.grads[0])
    v = v / v.norm()
    eig = 0.0
    for _ in range(max_iter):
        hv = op.matvec(v)
        eig = float(torch.dot(v, hv))
        norm = hv.norm()
        if norm == 0:  # v is in the null space: the Hessian is zero along every direction tried
            break
        if float((hv - eig * v).norm()) <= tol * max(abs(eig), 1e-30):
            break
        v = hv / norm
    return eig, op.n_hvp - start


def lanczos(
    op: HessianOperator, tol: float, max_iter: int, generator: torch.Generator
) -> tuple[float, int]:
    """Largest (algebraic) eigenvalue by Lanczos with full reorthogonalisation.

    Converges far faster than power iteration when the top eigenvalues are close (the usual
    case for network Hessians).  Stops when the Ritz residual ``r`` of the top Ritz value
    ``θ`` bounds its error to ``tol·|θ|``: ``r ≤ tol·|θ|`` (there is an eigenvalue within
    ``r``) or ``r²/gap ≤ tol·|θ|`` with ``gap`` the distance to the next Ritz value (the
    quadratic bound) while ``θ`` also moved by at most ``tol`` relative in the last step.
    Memory: ``max_iter`` vectors of the parameters' size.  Returns ``(eigenvalue, n_hvp)``.
    """
    _check_tol(tol, max_iter)
    start = op.n_hvp
    like = op.grads[0]
    q = _random_vector("normal", [op.numel], generator, like)
    q = q / q.norm()
    basis: list[Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    theta_prev: float | None = None
    theta = 0.0
    for _ in range(min(max_iter, op.numel)):
        basis.append(q)
        w = op.matvec(q)
        alpha = float(torch.dot(q, w))
        alphas.append(alpha)
        # Full reorthogonalisation (twice, "twice is enough") keeps the basis orthonormal in
        # floating point, so no spurious copies of converged eigenvalues appear.
        q_mat = torch.stack(basis)
        for _ in range(2):
            w = w - q_mat.T @ (q_mat @ w)
        beta = float(w.norm())
        k = len(alphas)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        theta = float(evals[-1])
        residual = beta * abs(float(evecs[-1, -1]))
        scale = tol * max(abs(theta), 1e-30)
        gap = float(evals[-1] - evals[-2]) if k > 1 else math.inf
        moved = theta_prev is None or abs(theta - theta_prev) > tol * max(abs(theta), 1e-30)
        if beta <= 1e-10 * max(abs(theta), 1e-30) or residual <= scale:
            break
        if not moved and gap > 0 and residual**2 / gap <= scale:
            break
        theta_prev = theta
        betas.append(beta)
        q = w / beta
    return theta, op.n_hvp - start


def _top_eig(
    op: HessianOperator, method: str, tol: float, max_iter: int, generator
) -> tuple[float, int]:
    if method not in METHODS:
        raise ValueError(f"unknown eigenvalue method {method!r}; choose one of {list(METHODS)}")
    run = lanczos if method == "lanczos" else power_iteration
    return run(op, tol, max_iter, generator)


def hessian_top_eigenvalue(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    params: Iterable[nn.Parameter] | None = None,
    tol: float = 1e-4,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    loss_fn: LossFn = F.cross_entropy,
    method: str = "lanczos",
) -> tuple[float, int]:
    """Top eigenvalue of the loss Hessian over ``params`` (all trainable if None).

    ``method="lanczos"`` (default) returns the largest eigenvalue; ``"power"`` runs plain
    power iteration, which returns the eigenvalue of largest magnitude (the same one unless
    a negative eigenvalue dominates).  ``tol`` is relative.  Returns ``(value, n_hvp)``.
    """
    with eval_mode(model):
        op = HessianOperator.from_loss(model, inputs, targets, params, loss_fn)
        return _top_eig(op, method, tol, max_iter, _default_generator(generator))


def _hutchinson(
    op: HessianOperator, n_samples: int, generator: torch.Generator
) -> tuple[float, float]:
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to give a standard error, got {n_samples}")
    samples = []
    for _ in range(n_samples):
        z = _random_vector("rademacher", [op.numel], generator, op.grads[0])
        samples.append(float(torch.dot(z, op.matvec(z))))
    s = torch.tensor(samples, dtype=torch.float64)
    return float(s.mean()), float(s.std(correction=1) / math.sqrt(n_samples))


def hutchinson_trace(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    params: Iterable[nn.Parameter] | None = None,
    n_samples: int = 32,
    generator: torch.Generator | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> tuple[float, float]:
    """Hutchinson estimate of ``tr H`` with Rademacher probes: ``(trace, standard error)``.

    ``E[zᵀHz] = tr H`` for ``z`` with independent ±1 entries; the standard error is the
    sample standard deviation over ``sqrt(n_samples)``.  One HVP per sample.
    """
    with eval_mode(model):
        op = HessianOperator.from_loss(model, inputs, targets, params, loss_fn)
        return _hutchinson(op, n_samples, _default_generator(generator))


def hessian_record(
    model: nn.Module,
    probe_inputs: Mapping[str, Tensor],
    probe_targets: Tensor,
    blocks: bool = True,
    *,
    loss_fn: LossFn = F.cross_entropy,
    tol: float = 1e-4,
    max_iter: int = 100,
    n_samples: int = 32,
    method: str = "lanczos",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Hessian measures on a probe batch, keyed as the run directory records them.

    Keys: ``hessian/top_eig``, ``hessian/trace``, ``hessian/trace_se`` over all trainable
    parameters and, when ``blocks`` and the model has per-modality encoders, the same three
    with ``/<block>`` appended for each modality and for ``fusion`` (a block with no
    parameters is left out).  One gradient graph is shared by every block.  ``progress``: a
    progress bar over the measures (top eigenvalue and trace per block), cleared when done.
    """
    generator = _default_generator(generator)
    with eval_mode(model):
        op = HessianOperator.from_loss(model, probe_inputs, probe_targets, None, loss_fn)
        targets_: list[tuple[str, HessianOperator]] = [("", op)]
        if blocks and has_modality_groups(model):
            for name, params in modality_parameter_groups(model).items():
                if params:
                    targets_.append((f"/{name}", op.block(params)))
        out: dict[str, float] = {}
        bar = tqdm(total=2 * len(targets_), disable=not progress, desc="Hessian", leave=False)
        for suffix, block_op in targets_:
            bar.set_postfix_str(f"top eigenvalue {suffix[1:] or 'all'}")
            top, _ = _top_eig(block_op, method, tol, max_iter, generator)
            bar.update(1)
            bar.set_postfix_str(f"trace {suffix[1:] or 'all'}")
            trace, se = _hutchinson(block_op, n_samples, generator)
            bar.update(1)
            out[f"hessian/top_eig{suffix}"] = top
            out[f"hessian/trace{suffix}"] = trace
            out[f"hessian/trace_se{suffix}"] = se
        bar.close()
    return out
