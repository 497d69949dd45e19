"""Files a user would bring, generated for the tests: a patients table and an ONNX model trained on its members."""

import io

import numpy as np
import torch
from torch import nn


def patients_csv(path):
    """The breast-cancer table with text labels, a patient id and a membership column (40% members)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    rng = np.random.default_rng(0)
    frame["diagnosis"] = np.where(frame.pop("target") == 1, "benign", "malignant")
    frame["member"] = (rng.random(len(frame)) < 0.4).astype(int)
    frame.insert(0, "patient_id", [f"p{i:04d}" for i in range(len(frame))])
    frame.to_csv(path, index=False)
    return frame


def onnx_for_table(csv_path, epochs=300):
    """An MLP trained on the table's members (features as the audit reads them) exported with torch.onnx.export;
    returns (onnx bytes, the torch model, the scaled features, labels)."""
    from mia_core.user_data import read_table

    data = read_table(csv_path, label_column="diagnosis", membership_column="member", id_column="patient_id")
    x, y = torch.from_numpy(data.dataset.x), torch.from_numpy(data.dataset.y)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 2))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    m = torch.from_numpy(data.members.copy())
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[m]), y[m]).backward()
        opt.step()
    net.eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (x[:2],), buf, dynamo=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue(), net, data.dataset.x, data.dataset.y
