"""Book-keeping per-sample clipping: exact DP-SGD gradients from a single backward pass.

DP-SGD needs, for every example i, the norm of its own gradient ‖∇ℓ_i‖ and then the sum
Σ_i c_i ∇ℓ_i with c_i = min(1, C / ‖∇ℓ_i‖). Opacus' ``hooks`` mode materialises every
per-sample gradient (for a word-embedding matrix: batch × vocabulary × width floats); its
``ghost`` mode computes the norms without them but then runs a *second* backward pass for the
weighted sum. Book-keeping (Bu et al. 2022, "Differentially Private Optimization on Large
Model at Small Cost") needs neither:

1. Forward with the trainable weights detached from autograd, keeping each trainable layer's
   input a (B × T × d_in) and, through a tensor hook, the gradient g (B × T × d_out) of the
   summed loss with respect to its output. The backward pass then only propagates activation
   gradients: the weight-gradient products that a plain backward computes are skipped.
2. Per-sample norms from (a, g) layer by layer, with whichever is cheaper: the *ghost* norm
   ‖g_iᵀ a_i‖² = ⟨a_i a_iᵀ, g_i g_iᵀ⟩ (cost T²) or the explicit per-sample gradient (cost
   d_in·d_out); embeddings use the token-equality ghost norm, LayerNorm its small explicit one.
3. The clipped sum Σ_i c_i g_iᵀ a_i, one matrix product per layer: exactly the product the
   plain backward would have computed, with the rows weighted by c.

The result is written to ``p.grad`` as Opacus' fast-gradient-clipping optimizer expects it
(the clipped sum of the physical batch), so noise, accumulation over physical batches,
accounting and distributed reduction stay Opacus' own. Supported trainable layers:
``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm`` (which covers BERT-style encoders and
LoRA adapters); `unsupported_layers` names anything else, and the engine then falls back to
an Opacus mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED = (nn.Linear, nn.Embedding, nn.LayerNorm)
CLIP_EPSILON = 1e-6  # as Opacus: c_i = min(1, C / (‖g_i‖ + 1e-6))


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own trainable parameters directly."""
    return [(name, module) for name, module in model.named_modules()
            if any(p.requires_grad for p in module.parameters(recurse=False))]


def unsupported_layers(model: nn.Module) -> list[str]:
    """Trainable layers book-keeping cannot handle, as 'name (Type)'."""
    problems = [f"{name} ({type(module).__name__})" for name, module in trainable_layers(model)
                if type(module) not in SUPPORTED]
    shared: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if parameter.requires_grad and id(parameter) in shared:
            problems.append(f"{name} (tied to {shared[id(parameter)]})")
        shared.setdefault(id(parameter), name)
    return problems


class _Record:
    __slots__ = ("inputs", "grad")

    def __init__(self, inputs: torch.Tensor):
        self.inputs = inputs
        self.grad: torch.Tensor | None = None


class BookKeepingModule(nn.Module):
    """Wraps a model so that a backward of the summed per-sample loss leaves clipped sums in p.grad.

    Use `BookKeepingLoss` as the criterion: its ``backward()`` runs the single backward pass
    and the book-keeping. Outside training (``eval()`` or no grad) the wrapper is transparent.
    """

    def __init__(self, module: nn.Module, max_grad_norm: float):
        super().__init__()
        problems = unsupported_layers(module)
        if problems:
            raise NotImplementedError(f"book-keeping clipping does not support: {', '.join(problems[:3])}")
        self._module = module
        self.max_grad_norm = max_grad_norm
        self._layers = [module for _, module in trainable_layers(module)]
        self._records: dict[nn.Module, _Record] = {}
        self._capturing = False
        self.per_sample_norms: torch.Tensor | None = None  # of the last batch (diagnostics only: not private)
        self._handles = [layer.register_forward_hook(self._capture) for layer in self._layers]

    def forward(self, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):
            return self._module(*args, **kwargs)
        parameters = [p for layer in self._layers for p in layer.parameters(recurse=False) if p.requires_grad]
        self._records = {}
        self._capturing = True
        for parameter in parameters:
            parameter.requires_grad_(False)  # no weight-gradient work in autograd: we do it ourselves
        try:
            return self._module(*args, **kwargs)
        finally:
            self._capturing = False
            for parameter in parameters:
                parameter.requires_grad_(True)

    def _capture(self, layer: nn.Module, inputs: tuple, output: torch.Tensor):
        if not self._capturing:
            return None
        if layer in self._records:
            raise NotImplementedError(f"book-keeping clipping: {type(layer).__name__} ran twice in one forward pass")
        record = _Record(inputs[0].detach())
        self._records[layer] = record
        if not output.requires_grad:  # nothing trainable below this layer: start the graph here
            output = output.detach().requires_grad_(True)

        def keep(grad: torch.Tensor) -> None:
            record.grad = grad.detach()

        output.register_hook(keep)
        return output

    # -- after the backward pass --------------------------------------------------------------

    def clip_and_write_grads(self, batch_size: int) -> torch.Tensor:
        """Per-sample norms, clipping coefficients, and Σ_i c_i ∇ℓ_i into every p.grad."""
        records = [(layer, self._records[layer]) for layer in self._layers if layer in self._records]
        reference = next(iter(self._module.parameters()))
        squared = torch.zeros(batch_size, device=reference.device, dtype=torch.float32)
        grams: dict[tuple, torch.Tensor] = {}  # a·aᵀ of inputs several layers share (query, key, value)
        for layer, record in records:
            if record.grad is None:  # the layer ran but the loss does not depend on it
                record.grad = torch.zeros_like(_output_like(layer, record.inputs))
            squared += _squared_norms(layer, record.inputs, record.grad, grams).float()
        norms = squared.sqrt()
        self.per_sample_norms = norms
        coefficients = (self.max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0)
        for layer, record in records:
            _write_clipped_sum(layer, record.inputs, record.grad, coefficients)
            # the autograd graph (alive while the caller holds the loss) keeps the hook that
            # owns this record: drop the tensors now, not at the next step
            record.inputs = record.grad = None
        for layer in self._layers:  # a trainable layer that did not run contributes zero
            for parameter in layer.parameters(recurse=False):
                if parameter.requires_grad and parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
        self._records = {}
        return coefficients

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class BookKeepingLoss:
    """Criterion for `BookKeepingModule`: per-sample cross-entropy whose backward() clips."""

    def __init__(self, module: BookKeepingModule, criterion: nn.Module | None = None):
        self.module = module
        self.criterion = criterion or nn.CrossEntropyLoss(reduction="none")
        self.criterion.reduction = "none"

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> "BookKeepingTensor":
        return BookKeepingTensor(self.module, self.criterion(logits, target))


class BookKeepingTensor:
    """The loss of one physical batch: ``detach()`` gives the mean, ``backward()`` clips."""

    def __init__(self, module: BookKeepingModule, per_sample: torch.Tensor):
        self.module = module
        self.per_sample = per_sample

    def detach(self) -> torch.Tensor:
        return self.per_sample.mean().detach()

    def item(self) -> float:
        return float(self.detach())

    def backward(self) -> None:
        self.per_sample.sum().backward()  # per-sample gradients of ℓ_i, not ℓ_i / B
        self.module.clip_and_write_grads(len(self.per_sample))


# -- per-layer arithmetic -------------------------------------------------------------------------

def _output_like(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return inputs.new_zeros(*inputs.shape[:-1], layer.out_features)
    if isinstance(layer, nn.Embedding):
        return torch.zeros(*inputs.shape, layer.embedding_dim, device=inputs.device, dtype=layer.weight.dtype)
    return torch.zeros_like(inputs)


def _as_sequence(tensor: torch.Tensor) -> torch.Tensor:
    """(B, d) → (B, 1, d); (B, …, d) → (B, T, d)."""
    if tensor.dim() == 2:
        return tensor.unsqueeze(1)
    return tensor.reshape(tensor.shape[0], -1, tensor.shape[-1])


def _squared_norms(layer: nn.Module, inputs: torch.Tensor, grad: torch.Tensor, grams: dict) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return _linear_squared_norms(layer, _as_sequence(inputs), _as_sequence(grad), grams)
    if isinstance(layer, nn.Embedding):
        return _embedding_squared_norms(layer, inputs.reshape(inputs.shape[0], -1),
                                        grad.reshape(grad.shape[0], -1, grad.shape[-1]))
    return _layer_norm_squared_norms(layer, inputs, grad)


def _gram(a: torch.Tensor, grams: dict) -> torch.Tensor:
    key = (a.data_ptr(), tuple(a.shape), tuple(a.stride()))
    if key not in grams:
        grams[key] = torch.bmm(a, a.transpose(1, 2))
    return grams[key]


def _linear_squared_norms(layer: nn.Linear, a: torch.Tensor, g: torch.Tensor, grams: dict) -> torch.Tensor:
    batch, steps, width_in = a.shape
    width_out = g.shape[-1]
    total = torch.zeros(batch, device=a.device, dtype=g.dtype)
    if layer.weight.requires_grad:
        if steps == 1:
            total += (a.squeeze(1) ** 2).sum(-1) * (g.squeeze(1) ** 2).sum(-1)
        elif steps * steps * (width_in + width_out) <= steps * width_in * width_out:
            # ghost norm: ‖Σ_t g_t a_tᵀ‖² = Σ_{t,s} (a_t·a_s)(g_t·g_s)
            total += (_gram(a, grams) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        else:
            total += (torch.bmm(g.transpose(1, 2), a) ** 2).sum((1, 2))
    if layer.bias is not None and layer.bias.requires_grad:
        total += (g.sum(1) ** 2).sum(-1)
    return total


def _embedding_squared_norms(layer: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    if layer.padding_idx is not None:  # torch never updates the padding row
        g = g * (ids != layer.padding_idx).unsqueeze(-1).to(g.dtype)
    same_token = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(g.dtype)
    return (torch.bmm(g, g.transpose(1, 2)) * same_token).sum((1, 2))


def _layer_norm_parts(layer: nn.LayerNorm, inputs: torch.Tensor, grad: torch.Tensor):
    """Per-sample gradients of a LayerNorm's weight and bias, (B, *shape) each."""
    dims = tuple(range(1, inputs.dim() - len(layer.normalized_shape)))
    weight = bias = None
    if layer.weight is not None and layer.weight.requires_grad:
        normalised = F.layer_norm(inputs, layer.normalized_shape, eps=layer.eps)
        weight = (normalised * grad).sum(dims) if dims else normalised * grad
    if layer.bias is not None and layer.bias.requires_grad:
        bias = grad.sum(dims) if dims else grad
    return weight, bias


def _layer_norm_squared_norms(layer: nn.LayerNorm, inputs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(inputs.shape[0], device=inputs.device, dtype=grad.dtype)
    for part in _layer_norm_parts(layer, inputs, grad):
        if part is not None:
            total += (part.reshape(part.shape[0], -1) ** 2).sum(-1)
    return total


def _accumulate(parameter: nn.Parameter, value: torch.Tensor) -> None:
    value = value.to(parameter.dtype).reshape(parameter.shape)
    parameter.grad = value if parameter.grad is None else parameter.grad + value


def _write_clipped_sum(layer: nn.Module, inputs: torch.Tensor, grad: torch.Tensor, c: torch.Tensor) -> None:
    c = c.to(grad.dtype)
    if isinstance(layer, nn.Linear):
        a, g = _as_sequence(inputs), _as_sequence(grad)
        weighted = g * c.view(-1, 1, 1)
        if layer.weight.requires_grad:
            _accumulate(layer.weight, weighted.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1]))
        if layer.bias is not None and layer.bias.requires_grad:
            _accumulate(layer.bias, weighted.sum((0, 1)))
    elif isinstance(layer, nn.Embedding):
        ids = inputs.reshape(-1)
        weighted = (grad * c.view(-1, *([1] * (grad.dim() - 1)))).reshape(-1, grad.shape[-1])
        if layer.padding_idx is not None:
            keep = ids != layer.padding_idx
            ids, weighted = ids[keep], weighted[keep]
        summed = torch.zeros_like(layer.weight)
        summed.index_add_(0, ids, weighted.to(summed.dtype))
        _accumulate(layer.weight, summed)
    else:
        weight, bias = _layer_norm_parts(layer, inputs, grad)
        if weight is not None:
            _accumulate(layer.weight, torch.einsum("b,b...->...", c, weight))
        if bias is not None:
            _accumulate(layer.bias, torch.einsum("b,b...->...", c, bias))
