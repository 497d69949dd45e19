"""Architectures: the built-in CNN pools before it rectifies, which is the conv-ReLU-pool network bit for bit."""

import copy

import torch
from torch import nn

from mia_core.data import load_dataset
from mia_core.models import build_model, search_model
from mia_core.training import TrainConfig, train


def _relu_then_pool(model: nn.Module) -> nn.Module:
    """A copy of `model` with every (max-pooling, ReLU) pair of its body in the textbook order, ReLU first."""
    other = copy.deepcopy(model)
    mods = other.body._modules
    names = list(mods)
    for a, b in zip(names, names[1:]):
        if isinstance(mods[a], nn.MaxPool2d) and type(mods[b]) is nn.ReLU:
            mods[a], mods[b] = mods[b], mods[a]
    return other


def _input_gradient(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    return torch.autograd.grad(torch.log_softmax(net(xx), 1)[:, 3].sum(), xx)[0]


def test_the_cnn_pools_before_it_rectifies_with_the_values_gradients_and_training_of_relu_then_pool():
    """Max-pooling and the ReLU commute in value and in gradient (models.pool_before_relu): the built-in CNN's
    logits and input gradients on real digits are the textbook order's bit for bit, at initialisation and after
    training both on the same data with the same seed, and the trained weights are identical."""
    ds = load_dataset("mnist5k")
    x, y = torch.from_numpy(ds.x[:256]), torch.from_numpy(ds.y[:256])
    torch.manual_seed(0)
    ours = build_model("cnn", ds.input_shape, ds.num_classes, width=32)
    kinds = [type(m) for m in ours.body]
    assert kinds[:6] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    textbook = _relu_then_pool(ours)
    assert [type(m) for m in textbook.body][:3] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    ours.eval(), textbook.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), textbook(x))
    assert torch.equal(_input_gradient(ours, x), _input_gradient(textbook, x))
    for net in (ours, textbook):
        train(net, x, y, TrainConfig(epochs=3, batch_size=32, seed=5, track_accuracy=False))
    for (name, a), (_, b) in zip(ours.state_dict().items(), textbook.state_dict().items()):
        assert torch.equal(a, b), name
    ours.eval(), textbook.eval()
    with torch.no_grad():
        logits = ours(x)
        assert torch.equal(logits, textbook(x))
    assert (logits.argmax(1) == y).float().mean() > 0.5  # it learned: the comparison is not between two constants
    assert torch.equal(_input_gradient(ours, x), _input_gradient(textbook, x))


def test_a_search_copy_of_a_users_network_pools_before_it_rectifies_with_the_same_bits():
    """A user's conv-ReLU-pool network is searched through a copy that pools first (and rectifies in place): its
    logits and input gradients equal those of the plain channels-last copy bit for bit; the user's model is
    left in its own order."""
    ds = load_dataset("mnist5k")
    x = torch.from_numpy(ds.x[:64])
    torch.manual_seed(1)
    users = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                          nn.Flatten(), nn.Linear(16 * 7 * 7, 10)).eval()
    fast = search_model(users, x).model
    assert [type(m) for m in fast][:6] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    assert all(m.inplace for m in fast if isinstance(m, nn.ReLU))
    assert [type(m) for m in users][:3] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    assert not any(m.inplace for m in users if isinstance(m, nn.ReLU))
    plain = copy.deepcopy(users).requires_grad_(False).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(fast(x), plain(x))
    grad = _input_gradient(fast, x)
    assert grad.abs().sum() > 0
    assert torch.equal(grad, _input_gradient(plain, x))
