"""Scale: shadow / reference models as Ray tasks (a local two-worker Ray instance) write the same chunks into the
store as local training, and either resumes the other."""

import functools
import shutil

import numpy as np
import pytest
import torch

from mia_core.data import load_dataset
from mia_core.lira import shadow_set
from mia_core.models import build_model


def test_shadow_chunks_on_a_local_ray_match_local_training_and_resume_it(tmp_path):
    ray = pytest.importorskip("ray")
    ds = load_dataset("digits")
    x, y = torch.from_numpy(ds.x[:240]), torch.from_numpy(ds.y[:240])
    population = torch.from_numpy(ds.x[240:300])
    build = functools.partial(build_model, "mlp", ds.input_shape, ds.num_classes, width=32)
    kw = dict(n_models=4, epochs=3, batch_size=64, lr=1e-3, weight_decay=0.0, seed=0, chunk=2, population=population)
    local = shadow_set(build, x, y, cache_dir=tmp_path / "local", **kw)
    shutil.copytree(tmp_path / "local" / "chunk-000", tmp_path / "ray" / "chunk-000")  # an interrupted run's part
    seen = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = shadow_set(build, x, y, cache_dir=tmp_path / "ray", executor="ray",
                            progress=lambda stage, f: seen.append(f), **kw)
    finally:
        ray.shutdown()
    assert seen == [1.0]  # only the missing chunk was trained, on Ray
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["chunk-000", "chunk-001"]
    np.testing.assert_array_equal(remote.inside, local.inside)
    np.testing.assert_allclose(remote.logp, local.logp, atol=1e-4)  # one thread per Ray worker: float noise only
    np.testing.assert_allclose(remote.population_logp, local.population_logp, atol=1e-4)


def test_an_audit_passes_a_convolutional_network_at_most_one_chunk_of_samples_at_a_time(tmp_path):
    """Memory bounded by the batch, not the data set: in a whole audit of a CNN on the CPU, every pass without
    gradients (scoring, verdicts, I_V's interval bounds, the reference models' logits) holds at most
    CPU_CONV_ROWS samples, and every pass with gradients at most the training batch or the search's chunk. I_V
    bounded whole groups at once (1,024 rows) and the reference models scored 2,048 rows a pass before: the
    peaks of a 2,000-member mnist5k audit (bench/audit_memory.py)."""
    import dataclasses

    from mia_core.config import DEFAULT_CONFIG
    from mia_core.experiment import run_experiment
    from mia_core.models import CPU_CONV_ROWS

    cfg = dataclasses.replace(DEFAULT_CONFIG, dataset="mnist5k", model="cnn", width=8, members=300, epochs=1,
                              label_only_queries=30, label_only_linf_queries=30, lira_shadows=2, bootstrap_rounds=20,
                              reference_searched=None)
    rows = {True: [], False: []}

    def record(module, args):
        if isinstance(module, torch.nn.Conv2d):
            rows[torch.is_grad_enabled()].append(len(args[0]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        run = run_experiment(cfg, store=tmp_path)
    finally:
        hook.remove()
    assert len(run.table.scores("verified_confidence", "members")) == 300
    assert np.isfinite(run.table.scores("verified_confidence", "members")).all()
    assert rows[False] and max(rows[False]) == CPU_CONV_ROWS  # 300-sample groups, a pool of 1,100, in chunks
    assert rows[True] and max(rows[True]) <= max(cfg.batch_size, CPU_CONV_ROWS // 2)


def test_shadow_chunks_trained_in_threads_give_local_trainings_bits_and_restore_the_thread_count(tmp_path, monkeypatch):
    """The threads executor: a plain MLP's chunks side by side, one intra-op thread each, stored chunk by chunk,
    the same bits as one after the other in this thread (mnist5k's 784 inputs: their statistics are a reduction
    that rounds differently with one thread, so they are fitted with the caller's count); a CNN trains here."""
    import threading

    from mia_core import lira

    ds = load_dataset("mnist5k")
    x, y = torch.from_numpy(ds.x[:600]), torch.from_numpy(ds.y[:600])
    population = torch.from_numpy(ds.x[600:700])
    kw = dict(n_models=6, chunk=2, epochs=2, batch_size=64, lr=1e-3, weight_decay=0.0, seed=0, population=population)
    where = []
    original = lira._chunk_arrays
    monkeypatch.setattr(lira, "_chunk_arrays",  # a spy: the real training, and the thread it ran in
                        lambda *a: (where.append(threading.current_thread().name), original(*a))[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for training in ("mixed", "stacked"):
            mlp = functools.partial(build_model, "mlp", ds.input_shape, ds.num_classes, width=64)
            local = shadow_set(mlp, x, y, executor="local", training=training, **kw)
            where.clear()
            seen = []
            threaded = shadow_set(mlp, x, y, executor="threads", training=training, cache_dir=tmp_path / training,
                                  progress=lambda stage, f: seen.append(f), **kw)
            assert torch.get_num_threads() == 2
            assert len(where) == 3 and all(n.startswith("mia-shadows") for n in where), where
            np.testing.assert_allclose(seen, [1 / 3, 2 / 3, 1.0])
            assert sorted(p.name for p in (tmp_path / training).iterdir()) == ["chunk-000", "chunk-001", "chunk-002"]
            np.testing.assert_array_equal(threaded.logp, local.logp)
            np.testing.assert_array_equal(threaded.population_logp, local.population_logp)
        where.clear()
        cnn = functools.partial(build_model, "cnn", ds.input_shape, ds.num_classes, width=4)
        shadow_set(cnn, x[:80], y[:80], executor="threads", **(kw | {"n_models": 2, "chunk": 1, "epochs": 1}))
        assert where == ["MainThread", "MainThread"]
    finally:
        torch.set_num_threads(threads)


def test_auto_trains_shadows_in_threads_only_in_a_process_that_computes_one_thing(tmp_path, monkeypatch):
    from mia_core import cli, lira

    monkeypatch.setattr(lira, "_owns_its_process", False)  # as in the app's server process, or a notebook
    assert lira.resolve_executor("auto") == "local" and lira.resolve_executor("ray") == "ray"
    with pytest.raises(ValueError, match="shadow executor must be one of auto, local, threads, ray"):
        lira.resolve_executor("dask")
    assert cli.main(["runs", "--store", str(tmp_path)]) == 0  # any command claims its process
    assert lira.resolve_executor("auto") == "threads" and lira.resolve_executor("local") == "local"


def test_an_interrupt_stops_the_chunks_training_in_threads_at_their_next_step(tmp_path, monkeypatch):
    """Ctrl-C (or an error) while chunks train in threads: the running chunks are told to stop at their next
    step, the others never start, and only finished chunks are in the store."""
    import threading

    from mia_core import lira

    ds = load_dataset("digits")
    x, y = torch.from_numpy(ds.x[:240]), torch.from_numpy(ds.y[:240])
    build = functools.partial(build_model, "mlp", ds.input_shape, ds.num_classes, width=32)
    events = []
    original = lira._chunk_arrays
    monkeypatch.setattr(lira, "_chunk_arrays", lambda *a: (events.append(a[-1]["stop"]), original(*a))[1])

    def interrupt(stage, fraction):
        raise KeyboardInterrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            shadow_set(build, x, y, n_models=8, chunk=2, epochs=3, batch_size=64, lr=1e-3, weight_decay=0.0, seed=0,
                       executor="threads", cache_dir=tmp_path, progress=interrupt)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert events and all(e.is_set() for e in events)
    assert len(list(tmp_path.iterdir())) == 1  # the chunk whose storing was interrupted; nothing half-written
    assert not [t for t in threading.enumerate() if t.name.startswith("mia-shadows")]
    stop = threading.Event()
    stop.set()
    with pytest.raises(KeyboardInterrupt, match="stopped"):
        lira.train_shadow_chunk(build, x, y, torch.arange(200).reshape(2, 100), epochs=1, batch_size=64, lr=1e-3,
                                weight_decay=0.0, seed=0, stop=stop)
