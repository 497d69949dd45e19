"""Seeded training and safe checkpoints."""

import pickle

import pytest
import torch

from mia_core.models import build_model
from mia_core.training import CheckpointError, TrainConfig, load_weights, read_state_dict, save_checkpoint, train


def _train_once(digits, seed):
    torch.manual_seed(seed)
    m = build_model("mlp", digits.input_shape, digits.num_classes, width=32)
    x, y = torch.from_numpy(digits.x[:200]), torch.from_numpy(digits.y[:200])
    m.normalize.fit(x)
    hist = train(m, x, y, TrainConfig(epochs=3, seed=seed))
    return m, hist


def test_training_is_deterministic_and_learns(digits):
    a, ha = _train_once(digits, 0)
    b, _ = _train_once(digits, 0)
    c, _ = _train_once(digits, 1)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.state_dict()["body.1.weight"], c.state_dict()["body.1.weight"])
    assert ha.loss[-1] < ha.loss[0]


def test_reference_models_skip_the_accuracy_passes_and_train_to_the_same_weights(digits):
    """Reference models train with track_accuracy=False (lira._train_one_by_one): no evaluation pass every 5
    epochs, the very same weights (dropout's draws and the shuffling are untouched by those passes)."""
    x = torch.from_numpy(digits.x[:120]).view(-1, 1, 8, 8)
    y = torch.from_numpy(digits.y[:120])
    nets, hists = [], []
    for track in (True, False):
        torch.manual_seed(3)
        m = build_model("cnn", (1, 8, 8), 10, width=32, dropout=0.3)
        hists.append(train(m, x, y, TrainConfig(epochs=6, seed=2, fused=True, track_accuracy=track)))
        nets.append(m)
    assert len(hists[0].train_accuracy) == 2 and hists[1].train_accuracy == []
    assert hists[0].loss == hists[1].loss
    for k, v in nets[0].state_dict().items():
        assert torch.equal(v, nets[1].state_dict()[k]), k


@pytest.mark.parametrize("arch", ["linear", "mlp", "cnn", "resnet18"])
def test_architectures_take_images_and_normalise_inside(digits, arch):
    m = build_model(arch, digits.input_shape, 10, width=32).eval()
    x = torch.from_numpy(digits.x[:4])
    assert m(x).shape == (4, 10)
    assert "normalize.mean" in m.state_dict()


def test_cnn_refuses_vectors():
    with pytest.raises(ValueError, match="image"):
        build_model("cnn", (2,), 2)


def test_checkpoint_round_trip(tmp_path, digits):
    m, _ = _train_once(digits, 0)
    save_checkpoint(m, tmp_path / "m.safetensors")
    torch.save(m.state_dict(), tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        fresh = build_model("mlp", digits.input_shape, 10, width=32)
        load_weights(fresh, read_state_dict(tmp_path / name))
        for k, v in m.state_dict().items():
            assert torch.equal(v, fresh.state_dict()[k])


def test_bare_body_state_dict_is_accepted(tmp_path, digits):
    m, _ = _train_once(digits, 0)
    torch.save(m.body.state_dict(), tmp_path / "body.pt")
    fresh = build_model("mlp", digits.input_shape, 10, width=32)
    load_weights(fresh, read_state_dict(tmp_path / "body.pt"))
    assert torch.equal(fresh.body[1].weight, m.body[1].weight)


def test_wrong_shape_is_explained(tmp_path, digits):
    m, _ = _train_once(digits, 0)
    save_checkpoint(m, tmp_path / "m.safetensors")
    wider = build_model("mlp", digits.input_shape, 10, width=64)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(wider, read_state_dict(tmp_path / "m.safetensors"))
    other = build_model("cnn", digits.input_shape, 10, width=32)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(other, read_state_dict(tmp_path / "m.safetensors"))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload", [
    b"\x00\x01garbage that is no checkpoint",
    b"PK\x03\x04truncated zip",
])
def test_corrupt_checkpoint_is_refused(tmp_path, payload):
    p = tmp_path / "bad.pt"
    p.write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_state_dict(p)


def test_pickled_objects_are_never_unpickled(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, p)
    with pytest.raises(CheckpointError):
        read_state_dict(p)
    assert "pwned" not in capsys.readouterr().out
    q = tmp_path / "evil2.pt"
    q.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CheckpointError):
        read_state_dict(q)
    assert "pwned" not in capsys.readouterr().out


def test_non_state_dict_is_refused(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p)
    with pytest.raises(CheckpointError, match="state_dict"):
        read_state_dict(p)
