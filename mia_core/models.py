"""Model architectures. Normalisation lives inside each model, so inputs and perturbations are in [0, 1] space."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .registry import Registry
from .tensors import model_device


class Normalize(nn.Module):
    """(x - mean) / std with per-channel (images) or per-feature (vectors) statistics stored as buffers."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        stat_shape = (shape[0], 1, 1) if len(shape) == 3 else tuple(shape)
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("std", torch.ones(stat_shape))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the statistics from training inputs x [N, *shape]."""
        dims = (0, 2, 3) if x.ndim == 4 else (0,)
        self.mean.copy_(x.mean(dim=dims).reshape(self.mean.shape))
        self.std.copy_(x.std(dim=dims).reshape(self.std.shape).clamp_min(1e-2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Normalize followed by a body that maps normalised inputs to logits."""

    def __init__(self, normalize: Normalize, body: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))


def _linear(shape: tuple[int, ...], k: int, width: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), k))


def _mlp(shape: tuple[int, ...], k: int, width: int, dropout: float) -> nn.Module:
    d = math.prod(shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, width), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width, k),
    )


def _cnn(shape: tuple[int, ...], k: int, width: int, dropout: float) -> nn.Module:
    if len(shape) != 3:
        raise ValueError(f"cnn needs image inputs (C, H, W); this dataset has shape {shape}. Use mlp or linear.")
    c, h, w = shape
    c1, c2 = max(8, width // 4), max(16, width // 2)
    return nn.Sequential(  # pooling before the rectifier: see pool_before_relu
        nn.Conv2d(c, c1, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(c2 * (h // 4) * (w // 4), width), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width, k),
    )


def _resnet18(shape: tuple[int, ...], k: int, width: int, dropout: float) -> nn.Module:
    """torchvision's ResNet-18 for small images: 3x3 stride-1 stem, no max-pool (as for CIFAR)."""
    if len(shape) != 3:
        raise ValueError(f"resnet18 needs image inputs (C, H, W); this dataset has shape {shape}.")
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=k)
    net.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@dataclass(frozen=True)
class ModelSpec:
    """A built-in architecture: build(input_shape, num_classes, width, dropout) -> the body after Normalize."""

    name: str
    build: Callable[[tuple[int, ...], int, int, float], nn.Module]
    help: str
    interval_bounds: bool = True  # I_V (interval bound propagation) is defined for it


MODELS: Registry[ModelSpec] = Registry("model")
MODELS.register(ModelSpec("linear", _linear, "multinomial logistic regression"))
MODELS.register(ModelSpec("mlp", _mlp, "two hidden layers of `width` ReLU units"))
MODELS.register(ModelSpec("cnn", _cnn, "two convolution blocks and a `width`-unit dense layer (images)"))
MODELS.register(ModelSpec("resnet18", _resnet18, "torchvision's ResNet-18 for 32x32 inputs (images)",
                          interval_bounds=False))


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, width: int = 256, dropout: float = 0.0
) -> Classifier:
    """A fresh `Classifier` of the named architecture (see MODELS) for inputs of `input_shape`; a name
    'factory:package.module:function' builds the body with the user's own factory f(input_shape, num_classes),
    read as logits (`user_models.as_logits` on seeded normalised inputs): a body that ends in a softmax trains on
    log p, one with one output (a binary classifier's logit or sigmoid) on two classes' logits."""
    if name.startswith("factory:"):
        from .user_models import as_logits, build_from_factory, check_classifier

        body = build_from_factory(name.removeprefix("factory:"), tuple(input_shape), num_classes)
        probe = torch.randn((64, *input_shape), generator=torch.Generator().manual_seed(0))
        check_classifier(body, probe, num_classes)
        was_training = body.training
        body = as_logits(body.eval(), probe).train(was_training)
        return Classifier(Normalize(tuple(input_shape)), body)
    body = MODELS.get(name).build(tuple(input_shape), num_classes, width, dropout)
    return Classifier(Normalize(tuple(input_shape)), body)


def pick_device(preference: str = "auto") -> torch.device:
    """cuda when available (or asked for), else cpu."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no GPU is available; use --device cpu or auto.")
    return torch.device(preference)


@torch.no_grad()
def probability_grid(
    model: nn.Module, *, lo: float = 0.0, hi: float = 1.0, resolution: int = 120
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax of a 2-D model over a square grid: (xs [R], ys [R], probabilities [R, R, K]) for drawing."""
    device = model_device(model)
    xs = np.linspace(lo, hi, resolution, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1)).to(device)
    model.eval()
    prob = torch.softmax(model(pts), dim=1).cpu().numpy()
    return xs, xs, prob.reshape(resolution, resolution, -1)


def is_convolutional(model: nn.Module) -> bool:
    """Whether `model` has a convolution (of any dimension): its activations, not its weights, bound a batch."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def search_model(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model a search over inputs like `x` should query: on the CPU, a convolutional network runs 1.5-2x
    faster with its weights in channels-last layout (oneDNN's convolutions and max-pooling), so it is such a
    copy there (the caller's model is never changed), and the model itself everywhere else. The copy's logits
    differ from the original's by float noise of the order of a change in batch composition (~5e-7 relative,
    measured); searches take their final verdicts from the caller's model all the same."""
    if x.ndim != 4 or model_device(model).type != "cpu" or not is_convolutional(model):
        return model
    try:
        fast = copy.deepcopy(model)
    except Exception:  # a model that cannot be copied is searched as it is
        return model
    fast.requires_grad_(False)
    pool_before_relu(fast)
    _relu_in_place(fast)
    return RowChunks(fast.to(memory_format=torch.channels_last))


def _plain_mlp(model: nn.Module) -> tuple[list[tuple[str, str | None]], set[str]] | None:
    """The layers of a `Classifier` whose body is a plain multilayer perceptron (Flatten, Linear, ReLU, Identity
    and Dropout of rate 0 in one Sequential) as (kind, parameter prefix) pairs, and the prefixes of the biased
    linear layers; None for any other model."""
    if type(model) is not Classifier or type(model.normalize) is not Normalize or type(model.body) is not nn.Sequential:
        return None
    layers: list[tuple[str, str | None]] = []
    for name, layer in model.body.named_children():
        kind = type(layer)
        if kind is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1:
            layers.append(("flatten", None))
        elif kind is nn.Linear:
            layers.append(("linear", f"body.{name}"))
        elif kind is nn.ReLU:
            layers.append(("relu", None))
        elif not (kind is nn.Identity or (kind is nn.Dropout and layer.p == 0)):
            return None
    biased = {key for kind, key in layers
              if kind == "linear" and getattr(model.body, key.removeprefix("body.")).bias is not None}
    return layers, biased


def stacked_forward(model: nn.Module) -> Callable[[dict, dict, torch.Tensor], torch.Tensor] | None:
    """For a `Classifier` whose body is a plain multilayer perceptron (Flatten, Linear, ReLU, Identity and
    Dropout of rate 0 in one Sequential), a function (params, buffers, x [M, B, *shape]) -> logits [M, B, k] that
    runs M copies stacked by `torch.func.stack_module_state` with batched matrix products; None for any other
    model. It computes what vmap over `functional_call` computes, by the same operations (normalise, then
    matmul with the transposed weights plus the bias; bfloat16 autocast included), bit for bit on the CPU
    (tests/test_attacks_sota.py), without vmap's per-call cost: a digits MLP's shadow step takes 2.4 ms for 8
    models instead of 3.9 (bench/shadows.py)."""
    plain = _plain_mlp(model)
    if plain is None:
        return None
    layers, biased = plain

    def forward(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        h = (x - buffers["normalize.mean"].unsqueeze(1)) / buffers["normalize.std"].unsqueeze(1)
        for kind, key in layers:
            if kind == "flatten":
                h = h.flatten(2)
            elif kind == "relu":
                h = torch.relu(h)
            else:
                h = torch.matmul(h, params[f"{key}.weight"].transpose(1, 2))
                if key in biased:
                    h = h + params[f"{key}.bias"].unsqueeze(1)
        return h

    return forward


StackedGradients = Callable[[dict, dict, torch.Tensor, torch.Tensor, int, bool], dict[str, torch.Tensor]]


def stacked_gradients(model: nn.Module) -> StackedGradients | None:
    """For the models `stacked_forward` runs, a function (params, buffers, x [M, B, *shape], y [M, B], scale,
    mixed) -> {parameter name: gradient} of scale * cross_entropy(stacked logits [M * B, k], y) (the mean over
    all M * B rows, the stacked shadows' loss), with `mixed` as under bfloat16 autocast; None for any other
    model. It runs the kernels autograd's backward pass runs for that loss (nll_loss_backward,
    _log_softmax_backward_data, the sums of broadcast bias gradients, bmm's two gradient products, the casts,
    threshold_backward) on the same operands in the same order, so each gradient is autograd's bit for bit
    (tests/test_attacks_sota.py compares whole trainings with vmap's); what it leaves out is the autograd
    engine's own cost a step (and autocast's), and each weight's gradient is written into the weight's layout by
    the cast that makes it, not copied again: 16 digits MLP shadows train 1.17-1.19x faster in `mixed`, 1.04-1.13x
    in `fast` (interleaved in one process, two runs)."""
    plain = _plain_mlp(model)
    if plain is None:
        return None
    layers, biased = plain

    @torch.no_grad()
    def gradients(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor, scale: int,
                  mixed: bool) -> dict[str, torch.Tensor]:
        h = (x - buffers["normalize.mean"].unsqueeze(1)) / buffers["normalize.std"].unsqueeze(1)
        tape: list[tuple] = []  # what each layer's backward reads
        for kind, key in layers:
            if kind == "flatten":
                tape.append((kind, h.shape))
                h = h.flatten(2)
            elif kind == "relu":
                h = torch.relu(h)
                tape.append((kind, h))
            else:  # autocast casts matmul's floating operands to bfloat16 (a no-op cast where they already are)
                needs_input_grad = any(t[0] == "linear" for t in tape)  # a parameter comes before it
                a, w = h, params[f"{key}.weight"].transpose(1, 2)
                if mixed:
                    a, w = a.to(torch.bfloat16), w.to(torch.bfloat16)
                product = torch.matmul(a, w)
                tape.append((kind, key, h.dtype, product.dtype, a, w, needs_input_grad))
                h = product
                if key in biased:
                    h = h + params[f"{key}.bias"].unsqueeze(1)
        logp = torch.log_softmax(h.float().flatten(0, 1), 1)
        target = y.flatten()
        _, total_weight = torch.ops.aten.nll_loss_forward(logp, target, None, 1, -100)
        g = torch.ops.aten.nll_loss_backward(torch.ones(()) * scale, logp, target, None, 1, -100, total_weight)
        g = torch.ops.aten._log_softmax_backward_data(g, logp, 1, logp.dtype).view(h.shape).to(h.dtype)
        grads: dict[str, torch.Tensor] = {}
        for entry in reversed(tape):
            if entry[0] == "flatten":
                g = g.reshape(entry[1])
            elif entry[0] == "relu":
                g = torch.ops.aten.threshold_backward(g, entry[1], 0)
            else:
                _, key, input_dtype, product_dtype, a, w, needs_input_grad = entry
                if key in biased:
                    grads[f"{key}.bias"] = g.sum([1], keepdim=True).squeeze(1)
                g = g.to(product_dtype)
                weight_grad = a.transpose(1, 2).bmm(g).transpose(1, 2)  # then cast and laid out as the weight
                grads[f"{key}.weight"] = torch.empty_like(params[f"{key}.weight"]).copy_(weight_grad)
                if not needs_input_grad:
                    break
                g = g.bmm(w.transpose(1, 2)).to(input_dtype)
        return grads

    return gradients


def in_features_major(params: dict, mixed: bool) -> tuple[dict, set[str]]:
    """The stacked parameters as `stacked_gradients` trains them fastest: (leaves, transposed). Under `mixed`
    each weight [M, out, in] becomes a contiguous [M, in, out] leaf, the layout of its gradient's product
    (inputs^T @ output gradient), so that gradient is cast to float32 in memory order, not transposed (the
    transposing cast took a tenth of a digits MLP shadow step), and Adam updates contiguous tensors (its CPU fused
    kernel copies any other layout in and out). `transposed` names those weights: the model reads
    leaf.transpose(1, 2). bfloat16 products read a weight in either layout to the same bits
    (tests/test_attacks_sota.py); float32 ones do not always (a 256x10 product rounds differently), so in
    float32 nothing moves."""
    if not mixed:
        return params, set()
    transposed = {name for name, p in params.items() if name.endswith(".weight") and p.ndim == 3}
    return {name: p.detach().transpose(1, 2).contiguous().requires_grad_(p.requires_grad) if name in transposed
            else p for name, p in params.items()}, transposed


def pool_before_relu(model: nn.Module) -> None:
    """Swap each ReLU directly followed by a max-pooling layer in `model`'s sequential chains, in place.
    Max-pooling and the ReLU commute, values and gradients alike: max(relu(a), relu(b)) is relu(max(a, b))
    exactly, and both orders send a window's gradient to its first largest input, or nowhere when that input is
    not positive. So the reordered network is the conv-ReLU-pool one bit for bit (trained weights included:
    tests/test_models.py) with a quarter of the rectified activations: on the CPU the 28x28 CNN of width 256
    takes 11% less time a training step and 20% less an input gradient (bench/pool_order.py). The built-in
    `cnn` is built in this order; `search_model` reorders its copy of any other model."""
    for seq in (m for m in model.modules() if type(m) is nn.Sequential):  # a subclass may read layers' outputs
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            relu, pool = seq._modules[a], seq._modules[b]
            if type(relu) is nn.ReLU and isinstance(pool, nn.modules.pooling._MaxPoolNd) and not pool.return_indices:
                seq._modules[a], seq._modules[b] = pool, relu


_KEEPS_NO_OUTPUT = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
                    nn.modules.pooling._MaxPoolNd)
"""Layers that return a new tensor whose gradient needs their input, not their output: in a chain only the next
layer reads that output."""


def _relu_in_place(model: nn.Module) -> None:
    """Make the ReLUs of `model`'s sequential chains that follow such a layer rectify in place: the same values
    without allocating and first touching one more activation a layer (a search copy only)."""
    for seq in (m for m in model.modules() if type(m) is nn.Sequential):  # a subclass may read layers' outputs
        layers = list(seq)
        for before, layer in zip(layers, layers[1:]):
            if type(layer) is nn.ReLU and isinstance(before, _KEEPS_NO_OUTPUT):
                layer.inplace = True


CPU_CONV_ROWS = 128
"""Samples a convolutional network sees at once on the CPU without gradients (`RowChunks`); half with them."""


class RowChunks(nn.Module):
    """`model` over at most CPU_CONV_ROWS samples at a time (half as many where gradients are recorded), the
    outputs concatenated. On the CPU a convolutional network's activations for about a hundred samples stay in
    the cores' caches and the allocator's reused memory: a 28x28 CNN of width 256 (its search copy, ReLUs in
    place) answered about 5,000 queries a second in chunks of 128 against 2,300 in one pass over 2,048, and took
    1.3-1.6x the gradients a second in chunks of 64 as in chunks of 512 (bench/chunks.py). oneDNN
    computes each sample on its own, so the outputs and gradients are the same bits whichever samples share a
    chunk of equal size (tests/test_distances.py checks them); a chunk of another size (a last, smaller one; one
    pass over all samples) may take another kernel and differ by float noise (on an AVX512-BF16 CPU it did not;
    on an AVX512 CPU without BF16, 512 samples of a narrow convolution did)."""

    def __init__(self, model: nn.Module, rows: int = CPU_CONV_ROWS):
        super().__init__()
        self.model, self.rows = model, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.rows // 2 if torch.is_grad_enabled() else self.rows
        if len(x) <= rows:
            return self.model(x)
        return torch.cat([self.model(x[i : i + rows]) for i in range(0, len(x), rows)])


def gradient_slices(model: nn.Module, n: int) -> list[slice]:
    """The row ranges of a batch of `n` that a search differentiates one after the other: a RowChunks' chunks with
    gradients, else all n at once. Forward and backward of one range are done before the next is built, so the
    autograd graph held is one chunk's, not the batch's (a 512-sample L2 search on a 28x28 CNN of width 256 grew
    by 600 MB before, bench/memory.py); the outputs and gradients are the same bits as RowChunks' one call."""
    rows = model.rows // 2 if isinstance(model, RowChunks) else max(n, 1)
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def inference_rows(model: nn.Module, default: int) -> int:
    """Samples a no-gradient pass should give `model` at once: CPU_CONV_ROWS for a convolutional network on the
    CPU (see RowChunks), else `default`."""
    return CPU_CONV_ROWS if model_device(model).type == "cpu" and is_convolutional(model) else default


@torch.no_grad()
def logits_in_rows(model: nn.Module, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """model(x) without gradients, `inference_rows(model, rows)` samples at a time (rows None: all at once
    where the device allows it), holding one chunk's activations: each sample's logits are the same bits whatever
    shares its chunk, and within float noise of one pass (see RowChunks)."""
    rows = inference_rows(model, rows or max(len(x), 1))
    if len(x) <= rows:
        return model(x)
    return torch.cat([model(x[i : i + rows]) for i in range(0, len(x), rows)])
