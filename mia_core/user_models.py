"""A user's own model: a Python factory they name, any nn.Module, or an ONNX file, checked before an audit.

What an audited model must be: an `nn.Module` that maps a batch of inputs [N, *input_shape] to logits [N, C]
(C at least the number of classes; probabilities, from a softmax at its end, are read as log-probabilities) or,
for two classes, to one output [N, 1] or [N] (the logit of class 1, as `BCEWithLogitsLoss` trains it, or its
sigmoid probability; `OUTPUT_READINGS`), in eval mode, without side effects between calls (no state that changes
with each forward), and differentiable in its inputs for the white-box searches (the label-only attacks only
query labels). ONNX files are parsed as protocol buffers (never unpickled), converted to a differentiable torch
module with onnx2torch, and accepted only when the converted module agrees with ONNX Runtime on the user's own
inputs. A factory string is trusted local code that the user names themselves; nothing a browser uploads is ever
imported or unpickled.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn


class ModelError(ValueError):
    """A user's model cannot be audited; the message says why and what to do."""


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The function named by 'package.module:function' (trusted code the user names themselves)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"A model factory is named 'package.module:function', got '{spec}'.")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or an error raised while the module runs
        raise ModelError(f"Cannot import '{module_name}' for the model factory ({type(err).__name__}: {err}); is "
                         "its folder on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ModelError(f"'{module_name}' has no function '{attr}' (the factory '{spec}').")
    return fn


def build_from_factory(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """factory(input_shape, num_classes), checked to be an nn.Module."""
    fn = import_factory(spec)
    try:
        model = fn(tuple(input_shape), int(num_classes))
    except Exception as err:
        raise ModelError(f"The factory '{spec}' failed for input shape {tuple(input_shape)} and {num_classes} "
                         f"classes ({type(err).__name__}: {err}); it is called as f(input_shape, num_classes).") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"The factory '{spec}' returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


@torch.no_grad()
def check_classifier(model: nn.Module, x: torch.Tensor, num_classes: int) -> int:
    """Run the model on a few inputs and check it is a classifier for them: output [N, C] with C >= num_classes,
    or one output ([N, 1] or [N]) where there are at most two classes; finite. Returns C (1 for one output).
    Raises ModelError naming what is wrong."""
    n = min(len(x), 8)
    was_training = model.training
    model.eval()
    try:
        out = model(x[:n])
    except Exception as err:
        raise ModelError(f"The model failed on a batch of shape {tuple(x[:n].shape)} ({type(err).__name__}: "
                         f"{str(err)[:300]}); does it take inputs of this shape?") from None
    finally:
        model.train(was_training)
    out = logits_field(out)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"The model returned a {type(out).__name__}; it must return a tensor of logits [N, C] (or "
                         "an output with a `logits` tensor, as Hugging Face models return).")
    if out.ndim == 1 and out.shape[0] == n:
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] != n:
        raise ModelError(f"The model's output for a batch of {n} has shape {tuple(out.shape)}; it must be "
                         f"[{n}, C] logits (or [{n}, 1] / [{n}] for a binary classifier's one output).")
    if out.shape[1] == 1 and num_classes > 2:
        raise ModelError(f"The model has one output (a binary classifier's) but the labels go up to "
                         f"{num_classes - 1} ({num_classes} classes).")
    if 1 < out.shape[1] < num_classes:
        raise ModelError(f"The model has {out.shape[1]} outputs but the labels go up to {num_classes - 1} "
                         f"({num_classes} classes).")
    if not torch.isfinite(out).all():
        raise ModelError("The model's outputs contain NaN or infinite values on the data.")
    return int(out.shape[1])


def logits_field(out):
    """The logits in a model's output: the output itself where it is a tensor, else its `logits` (an attribute or
    a key, as Hugging Face's `ModelOutput` holds them); anything else as it is."""
    if isinstance(out, torch.Tensor):
        return out
    field = getattr(out, "logits", None)
    if field is None and isinstance(out, dict):
        field = out.get("logits")
    return field if isinstance(field, torch.Tensor) else out


class LogitsField(nn.Module):
    """A model whose output holds its logits in a field (Hugging Face's `ModelOutput.logits`, a dict's "logits"),
    answering those logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_field(self.model(x))


def with_tensor_output(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model itself where it answers `x` with a tensor; wrapped in `LogitsField` where its output holds the
    logits in a field."""
    if isinstance(model, LogitsField):
        return model
    with torch.no_grad():
        out = model(x[:2])
    return model if isinstance(out, torch.Tensor) or logits_field(out) is out else LogitsField(model)


OUTPUT_READINGS = {
    "logits": "logits [N, C], read as they are",
    "probabilities": "class probabilities [N, C] (a softmax at its end): log p is read as its logits",
    "one logit": "one output, the logit of class 1 (a binary classifier as BCEWithLogitsLoss trains it): read as "
                 "the two logits [0, z], whose softmax is its sigmoid",
    "one probability": "one output, the probability of class 1 (a sigmoid at its end): read as the "
                       "log-probabilities [log(1 - p), log p]",
}


class ProbabilitiesAsLogits(nn.Module):
    """A classifier whose outputs are class probabilities (a softmax at its end, as Keras models and many ONNX
    exports have), read as logits: log p, whose softmax is p again. The losses, confidences and likelihood ratios
    the attacks compute are then the model's own (a softmax over probabilities would flatten them all towards
    uniform), and its decision boundary, where two log-probabilities are equal, is the model's. With
    `before_softmax` (`logits_before`: the same network without its final softmax, sharing its layers), the
    logits z themselves are read: log_softmax(z) is log p without the rounding of p (no probability underflows
    to 0, so no loss is capped and no gradient vanishes)."""

    def __init__(self, model: nn.Module, before_softmax: nn.Module | None = None):
        super().__init__()
        self.model = model if before_softmax is None else before_softmax
        self.before_activation = before_softmax is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before_activation:
            return self.model(x)
        p = self.model(x)
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


class OneOutputAsLogits(nn.Module):
    """A binary classifier with one output, read as two-class logits: a logit z as [0, z] (softmax: [1 - sigmoid(z),
    sigmoid(z)], so cross-entropy on it is the binary cross-entropy the model trained with), a sigmoid probability
    p as [log(1 - p), log p], or, with `before_sigmoid` (`logits_before`: the network without its final sigmoid),
    as [0, z] from its logit z: float32 rounds p to exactly 1 once z passes about 17, where log(1 - p) and every
    gradient through p vanish; z keeps them. The decision boundary (z = 0, p = 1/2) is the model's, and the
    losses and confidences are its own."""

    def __init__(self, model: nn.Module, probability: bool, before_sigmoid: nn.Module | None = None):
        super().__init__()
        self.model = model if before_sigmoid is None else before_sigmoid
        self.probability, self.before_activation = probability, before_sigmoid is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x).reshape(len(x), 1)
        if not self.probability or self.before_activation:
            return torch.cat([torch.zeros_like(out), out], 1)
        below_one = 1 - torch.finfo(out.dtype).eps / 2  # the largest float under 1: log(1 - p) stays finite
        tiny = torch.finfo(out.dtype).tiny
        return torch.cat([torch.log1p(-out.clamp(max=below_one)), torch.log(out.clamp_min(tiny))], 1)


def _final_activation(gm: torch.fx.GraphModule, node, kind: str) -> bool:
    """Whether a traced node is a softmax over dimension 1 / -1 (kind "softmax") or a sigmoid (kind "sigmoid")."""
    if node.op == "call_module":
        layer = gm.get_submodule(node.target)
        return (type(layer) is nn.Sigmoid if kind == "sigmoid"
                else type(layer) is nn.Softmax and layer.dim in (1, -1))
    if kind == "sigmoid":
        return ((node.op == "call_function" and node.target in (torch.sigmoid, torch.special.expit,
                                                                nn.functional.sigmoid))
                or (node.op == "call_method" and node.target == "sigmoid")) and len(node.args) == 1
    is_softmax = ((node.op == "call_function" and node.target in (torch.softmax, nn.functional.softmax))
                  or (node.op == "call_method" and node.target == "softmax"))
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return is_softmax and dim in (1, -1) and set(node.kwargs) <= {"dim"} and len(node.args) <= 2


_SHAPE_METHODS = {"squeeze", "unsqueeze", "view", "reshape", "flatten", "contiguous"}
_SHAPE_FUNCTIONS = {torch.squeeze, torch.unsqueeze, torch.reshape, torch.flatten}


def _shape_only(gm: torch.fx.GraphModule, node) -> bool:
    """Whether a traced node only reshapes its first argument (squeeze, view, flatten...)."""
    return ((node.op == "call_method" and node.target in _SHAPE_METHODS)
            or (node.op == "call_function" and node.target in _SHAPE_FUNCTIONS)
            or (node.op == "call_module" and type(gm.get_submodule(node.target)) in (nn.Flatten, nn.Unflatten)))


def logits_before(model: nn.Module, kind: str, x: torch.Tensor) -> nn.Module | None:
    """The network without its final softmax (kind "softmax") or sigmoid (kind "sigmoid"), sharing its layers: the
    model traced with torch.fx, the activation (the output's node, or the node a chain of reshapes such as
    `.squeeze(1)` leads back to) replaced by its input. Kept only where that activation of it gives the model's
    own outputs on `x` (within 1e-6 + 1e-5 relative); None where the model cannot be traced, does not end in
    such an activation, or disagrees."""
    try:
        gm = torch.fx.symbolic_trace(model)
        node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        while isinstance(node, torch.fx.Node) and node.args and _shape_only(gm, node) and len(node.users) == 1:
            node = node.args[0]
        if (not isinstance(node, torch.fx.Node) or not node.args or len(node.users) != 1
                or not _final_activation(gm, node, kind)):
            return None
        node.replace_all_uses_with(node.args[0])
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.train(model.training)
        with torch.no_grad():
            z, p = gm(x), model(x)
            again = torch.sigmoid(z) if kind == "sigmoid" else torch.softmax(z, 1)
            agrees = again.shape == p.shape and torch.allclose(again.double(), p.double(), rtol=1e-5, atol=1e-6)
    except Exception:  # untraceable (control flow on values, unusual outputs): read the outputs as they are
        return None
    return gm if agrees else None


def _far_inputs(x: torch.Tensor) -> torch.Tensor:
    """x moved far outside any input box (seeded noise of scale 100): a sigmoid or softmax output stays in
    [0, 1] there, a logit leaves it."""
    gen = torch.Generator().manual_seed(0)
    return x + 100 * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def output_reading(model: nn.Module, x: torch.Tensor) -> str:
    """How the model's outputs on `x` are read (a key of OUTPUT_READINGS): probability vectors (every output in
    [0, 1], every row summing to 1 within 1e-4) or logits; with one output, a probability where it lies in [0, 1]
    on `x` and on `x` moved far out of the box (an untrained or a confident logit model leaves [0, 1] there;
    where the model fails or is not finite there, on `x` alone), else a logit. Log-softmax outputs are logits already (their softmax is the model's probabilities)."""
    def in_unit(out: torch.Tensor) -> bool:
        return bool(torch.isfinite(out).all() and ((out >= 0) & (out <= 1)).all())

    with torch.no_grad():
        out = model(x).double()
        if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
            if not in_unit(out):
                return "one logit"
            try:
                far = model(_far_inputs(x)).double()
            except Exception:  # a model that cannot run outside its box: read on `x` alone
                return "one probability"
            return "one probability" if in_unit(far) or not torch.isfinite(far).all() else "one logit"
    if (out.ndim == 2 and out.shape[1] > 1 and ((out >= 0) & (out <= 1)).all()
            and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), rtol=0.0, atol=1e-4)):
        return "probabilities"
    return "logits"


def read_as(model: nn.Module, reading: str, x: torch.Tensor) -> nn.Module:
    """The model wrapped so that its outputs are logits [N, C >= 2], as `reading` (OUTPUT_READINGS) says they are;
    probabilities through the logits before the final softmax / sigmoid where `logits_before` finds them (checked
    on `x`)."""
    if reading == "logits":
        return model
    if reading == "probabilities":
        return ProbabilitiesAsLogits(model, logits_before(model, "softmax", x))
    if reading == "one logit":
        return OneOutputAsLogits(model, probability=False)
    if reading == "one probability":
        return OneOutputAsLogits(model, probability=True, before_sigmoid=logits_before(model, "sigmoid", x))
    raise ValueError(f"unknown output reading {reading!r}; known: {', '.join(OUTPUT_READINGS)}")


def through_logits(model: nn.Module) -> bool:
    """Whether a model returned by `as_logits` / `read_as` reads probabilities through the logits before them."""
    return isinstance(model, (ProbabilitiesAsLogits, OneOutputAsLogits)) and model.before_activation


def reading_of(model: nn.Module) -> str:
    """How a model returned by `as_logits` / `read_as` reads its inner model's outputs."""
    if isinstance(model, ProbabilitiesAsLogits):
        return "probabilities"
    if isinstance(model, OneOutputAsLogits):
        return "one probability" if model.probability else "one logit"
    return "logits"


def as_logits(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model itself where it outputs logits on `x` (or is read as logits already); else wrapped so that it
    does (`with_tensor_output`, `output_reading`, `read_as`)."""
    if isinstance(model, (ProbabilitiesAsLogits, OneOutputAsLogits)):
        return model
    model = with_tensor_output(model, x)
    return read_as(model, output_reading(model, x), x)


def max_upload_bytes() -> int:
    """The largest model file accepted (MIA_MAX_UPLOAD_MB, 200 MB by default)."""
    from .limits import Limits

    return int(Limits.from_env().max_upload_mb * 2**20)


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX file converted to torch, with how closely it agrees with ONNX Runtime."""

    module: nn.Module
    digest: str  # sha256 of the file's bytes
    data: bytes
    max_abs_difference: float
    operators: tuple[str, ...]
    channels_last: bool = False  # the graph takes images as [N, H, W, C] (Keras, tf2onnx): `module` takes [N, C, H, W]


class ChannelsLastInput(nn.Module):
    """A model that takes images as [N, H, W, C], given the product's [N, C, H, W]: a permutation of the input's
    coordinates, so every distance is the same in either layout."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 2, 3, 1))


def takes_channels_last(declared: list[int | None], sample_shape: tuple[int, ...]) -> bool:
    """Whether a graph whose input declares `declared` (None: a free dimension) takes the sample's images
    [N, C, H, W] as [N, H, W, C]: its channel dimension is declared last and matches, every declared size fits
    that layout, and the declaration does not also fit [N, C, H, W]."""
    if len(declared) != 4 or len(sample_shape) != 4:
        return False
    _, c, h, w = sample_shape
    fits = lambda want: all(d is None or d == v for d, v in zip(declared[1:], want))  # noqa: E731
    return declared[3] == c and fits((h, w, c)) and not fits((c, h, w))


def onnx_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CONVERTER_OPSET = 17  # the newest default-domain opset whose operators onnx2torch 1.5.15 converts


def converter_ready(proto):
    """The same graph in a form onnx2torch converts, for a model it refuses as written (torch's default exporter
    writes opset 18+, whose Reshape, ReduceMean and Gelu onnx2torch lacks): each Gelu (opset 20) written as
    its formula in Erf or Tanh, the default-domain opset converted down to `CONVERTER_OPSET` by ONNX's version
    converter, and each Reshape's `allowzero=1` set to 0 (the two differ only where the target shape holds a 0;
    a constant shape is checked for one, and a shape computed in the graph holds one only for an empty dimension,
    which a batch of inputs does not have). What is converted from it is checked against ONNX Runtime on the
    user's own file, as every conversion is."""
    import onnx
    from onnx import numpy_helper, version_converter

    ready = onnx.ModelProto()
    ready.CopyFrom(proto)  # the caller's graph stays as the user wrote it
    _write_gelu_as_formula(ready.graph)
    opset = next((o.version for o in ready.opset_import if o.domain in ("", "ai.onnx")), CONVERTER_OPSET)
    if opset > CONVERTER_OPSET:
        ready = version_converter.convert_version(ready, CONVERTER_OPSET)
    constants = {t.name: t for t in ready.graph.initializer}
    constants.update({n.output[0]: a.t for n in ready.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    for node in ready.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = constants.get(node.input[1])
        if shape is None or not (numpy_helper.to_array(shape) == 0).any():
            for attribute in node.attribute:
                if attribute.name == "allowzero":
                    attribute.i = 0
    return ready


def _write_gelu_as_formula(graph) -> None:
    """Replace each Gelu node by 0.5 x (1 + erf(x / sqrt 2)), or its tanh approximation where the node says
    `approximate="tanh"` (Hendrycks & Gimpel 2016), in float32 constants."""
    from onnx import helper, numpy_helper

    nodes = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        approximate = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
        x, y = node.input[0], node.output[0]
        tag = f"{y}/gelu/"  # names of its own: no other node writes below this output's name

        def const(name: str, value: float) -> str:
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), tag + name))
            return tag + name

        def op(kind: str, a: str, b: str | None, out: str) -> None:
            nodes.append(helper.make_node(kind, [a] if b is None else [a, b], [out]))

        if approximate == "tanh":  # tanh(sqrt(2 / pi) (x + 0.044715 x^3))
            op("Mul", x, x, tag + "x2")
            op("Mul", tag + "x2", x, tag + "x3")
            op("Mul", tag + "x3", const("k", 0.044715), tag + "kx3")
            op("Add", x, tag + "kx3", tag + "inner")
            op("Mul", tag + "inner", const("s", math.sqrt(2 / math.pi)), tag + "arg")
            op("Tanh", tag + "arg", None, tag + "t")
        else:  # erf(x / sqrt 2)
            op("Mul", x, const("s", 1 / math.sqrt(2)), tag + "arg")
            op("Erf", tag + "arg", None, tag + "t")
        op("Add", tag + "t", const("one", 1.0), tag + "p")
        op("Mul", x, tag + "p", tag + "xp")
        op("Mul", tag + "xp", const("half", 0.5), y)
    del graph.node[:]
    graph.node.extend(nodes)


def _convert(proto) -> nn.Module:
    """onnx2torch's conversion of the graph, or of `converter_ready(graph)` where it refuses the graph as written
    (torch's default exporter: opset 18+); the first refusal is raised where both fail."""
    from onnx2torch import convert

    try:
        return convert(proto)
    except NotImplementedError as first:
        try:
            return convert(converter_ready(proto))
        except Exception:
            raise first from None


@functools.lru_cache(maxsize=4)
def _converted(data: bytes) -> nn.Module:
    """The converted graph, kept per process; converting draws layers' initial weights, so it runs on a forked
    random state: a copy's initialization depends on the caller's seed only, not on whether this was cached."""
    import onnx

    with torch.random.fork_rng(devices=[]):
        return _convert(onnx.load_model_from_string(data))


class OnnxGraphCopy(nn.Module):
    """A copy of a converted ONNX graph under one class for every copy (a torch.fx GraphModule makes a class
    per copy, and training copies stacked under vmap needs them to share one); given [N, C, H, W] images, it
    passes them as [N, H, W, C] to a graph that takes that layout."""

    def __init__(self, graph: nn.Module, channels_last: bool = False):
        super().__init__()
        self.graph, self.channels_last = graph, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.permute(0, 2, 3, 1) if self.channels_last else x)


_CONV_NORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def restore_batch_norms(module: nn.Module) -> int:
    """Put back the batch norms an exporter folded into the convolutions before them: each convolution of
    `module` becomes the same convolution without a bias followed by a batch norm over its output channels (as
    ResNets and most CNNs are written: a bias before a batch norm is cancelled by it). Returns how many."""
    restored = 0
    for parent in list(module.modules()):
        for name, layer in list(parent.named_children()):
            norm = _CONV_NORMS.get(type(layer))
            if norm is None:
                continue
            with torch.random.fork_rng(devices=[]):  # built, not drawn: the copy's reset draws its weights in order
                conv = type(layer)(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                   padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=False,
                                   padding_mode=layer.padding_mode)
            setattr(parent, name, nn.Sequential(conv, norm(layer.out_channels)))
            restored += 1
    return restored


def fresh_onnx_copy(data: bytes, channels_last: bool = False, batch_norm: bool = False) -> nn.Module:
    """A fresh, untrained copy of an ONNX model's architecture, for the reference models of LiRA and RMIA: the
    graph converted as `load_onnx` converts it, each layer re-initialized by its own `reset_parameters` (PyTorch's
    default initialization for that layer). Exporters fold batch norms into convolutions and drop dropout, so
    the copies train without them, unless `batch_norm` says the model trained with one after each convolution
    (`restore_batch_norms`; refused for a graph without convolutions). Refused where weights sit outside such
    layers (a parameter no layer resets, or a float initializer with two or more dimensions above 1, such as
    MatMul's weights); constants along one dimension (a normalization's per-channel mean, shaped [1, C, 1, 1])
    are kept as exported."""
    module = copy.deepcopy(_converted(bytes(data))).train()
    if batch_norm and not restore_batch_norms(module):
        raise ModelError("The ONNX graph has no convolution to restore a batch norm after; train its reference "
                         "copies without restoring batch norms.")
    reset: set[int] = set()
    for layer in module.modules():
        if layer is not module and callable(getattr(layer, "reset_parameters", None)):
            layer.reset_parameters()
            reset.update(id(p) for p in layer.parameters(recurse=False))
    stray = [n for n, p in module.named_parameters() if id(p) not in reset]
    stray += [n for n, b in module.named_buffers() if b.is_floating_point() and sum(d > 1 for d in b.shape) >= 2]
    if stray:
        raise ModelError(f"Reference models cannot be built from this ONNX graph: weights such as "
                         f"{', '.join(stray[:3])} are not in layers that can be re-initialized (convolutions, "
                         "linear layers, norms). Give the architecture's code instead (--model-factory, or "
                         "model_factory= in the API).")
    return OnnxGraphCopy(module, channels_last)


def load_onnx(source: bytes | str | Path, sample: np.ndarray, *, num_classes: int | None = None,
              atol: float = 1e-4, rtol: float = 1e-3) -> OnnxModel:
    """Parse an ONNX model (no pickle, no external data files), convert it with onnx2torch, and check the
    converted module against ONNX Runtime on `sample` (a few of the user's inputs): a difference above
    atol + rtol * |runtime output| is refused with the numbers."""
    import onnx
    import onnxruntime

    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    limit = max_upload_bytes()
    if len(data) > limit:
        raise ModelError(f"The model file is {len(data) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB "
                         "(MIA_MAX_UPLOAD_MB).")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:
        raise ModelError(f"This is not an ONNX model ({type(err).__name__}).") from None
    if not len(proto.graph.node):
        raise ModelError("This is not an ONNX model (its graph is empty).")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ModelError("The ONNX model keeps its weights in external files; export it as one self-contained file "
                         "(weights under 2 GB).")
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise ModelError(f"The ONNX model is not valid: {str(err)[:300]}") from None
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"The ONNX model takes {len(inputs)} inputs; a classifier takes one batch of inputs.")
    operators = tuple(sorted({n.op_type for n in proto.graph.node}))
    try:
        module = _convert(proto)
    except NotImplementedError as err:
        raise ModelError(f"The ONNX model uses an operator the converter (onnx2torch) does not support: "
                         f"{str(err)[:300]}. Operators in the model: {', '.join(operators)}. Exporting it with "
                         f"torch.onnx.export(..., opset_version={CONVERTER_OPSET}) may avoid it.") from None
    except Exception as err:
        raise ModelError(f"The ONNX model could not be converted to torch ({type(err).__name__}: "
                         f"{str(err)[:300]}).") from None
    module.eval()
    sample = np.ascontiguousarray(sample[: min(len(sample), 8)], dtype=np.float32)
    declared = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    channels_last = takes_channels_last(declared, sample.shape)
    if channels_last:
        module = ChannelsLastInput(module).eval()
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        fed = np.ascontiguousarray(sample.transpose(0, 2, 3, 1)) if channels_last else sample
        expected = session.run(None, {inputs[0].name: fed})[0]
    except Exception as err:
        dims = [d.dim_value or d.dim_param or "?" for d in inputs[0].type.tensor_type.shape.dim]
        raise ModelError(f"ONNX Runtime cannot run the model on inputs of shape {list(sample.shape)} (the model "
                         f"declares {dims}): {str(err)[:200]}") from None
    if num_classes is not None:
        check_classifier(module, torch.from_numpy(sample), num_classes)
    with torch.no_grad():
        got = module(torch.from_numpy(sample)).numpy()
    if got.shape != expected.shape:
        raise ModelError(f"The converted model's output has shape {got.shape}, ONNX Runtime's {expected.shape}.")
    diff = np.abs(got.astype(np.float64) - expected)
    allowed = atol + rtol * np.abs(expected)
    if not (diff <= allowed).all():
        raise ModelError(f"The converted model disagrees with ONNX Runtime: largest difference "
                         f"{float(diff.max()):.3g} on outputs of size up to {float(np.abs(expected).max()):.3g} "
                         f"(allowed {atol:g} + {rtol:g} x |output|); it is refused rather than audited wrongly.")
    return OnnxModel(module, onnx_digest(data), data, float(diff.max()), operators, channels_last)


def state_digest(model: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes and values): identifies a user's weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        buf = io.BytesIO()
        np.save(buf, t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy())
        h.update(buf.getvalue())
    return h.hexdigest()
