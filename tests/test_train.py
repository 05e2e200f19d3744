"""Training real networks, checkpoints, and the MLP builder."""
from __future__ import annotations

import numpy as np
import pytest

import handydl
from handydl import checkpoint, data, nn, optim, train


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_moons_reaches_98_percent(activation, optimizer):
    d = data.moons(n=1000, noise=0.1, seed=0)
    handydl.manual_seed(0)
    model = nn.MLP([2, 32, 32, 2], activation=activation, rng=0)
    opt = (optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
           else optim.Adam(model.parameters(), lr=0.01))
    train.fit(model, nn.CrossEntropyLoss(), opt, data.DataLoader(d.X_train, d.y_train, 32, shuffle=True, seed=0),
              epochs=60, log=None)
    acc = train.evaluate(model, nn.CrossEntropyLoss(), d.X_test, d.y_test)["acc"]
    assert acc >= 0.98, f"{activation}/{optimizer}: {acc:.3f}"


def test_regression_fit_reports_r2_and_learns():
    d = data.regression(seed=0)
    model = nn.MLP([5, 64, 64, 1], activation="tanh", rng=0)
    hist = train.fit(model, nn.MSELoss(), optim.Adam(model.parameters(), lr=0.01),
                     data.DataLoader(d.X_train, d.y_train, 32, shuffle=True, seed=0), epochs=60,
                     val_data=(d.X_test, d.y_test), log=None)
    assert hist["val_r2"][-1] > 0.9 and hist["val_mse"][-1] < hist["val_mse"][0]


def test_fit_is_reproducible_for_a_seed():
    d = data.moons(n=200, seed=1)

    def once():
        handydl.manual_seed(5)
        model = nn.MLP([2, 16, 2], dropout=0.1)
        h = train.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01),
                      data.DataLoader(d.X_train, d.y_train, 16, shuffle=True, seed=5), 5, log=None)
        return h["train_loss"], model.state_dict()
    (l1, s1), (l2, s2) = once(), once()
    assert l1 == l2
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])


def test_early_stopping_restores_the_best_weights():
    d = data.moons(n=300, noise=0.3, seed=2)
    model = nn.MLP([2, 64, 64, 2], rng=0)
    lines = []
    hist = train.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05),
                     data.DataLoader(d.X_train, d.y_train, 16, shuffle=True, seed=0), 200,
                     val_data=(d.X_test, d.y_test), early_stopping=5, log=lines.append)
    assert len(hist["epoch"]) < 200 and "early stopping" in lines[-1]
    best = min(hist["val_loss"])
    assert train.evaluate(model, nn.CrossEntropyLoss(), d.X_test, d.y_test)["loss"] == pytest.approx(best, rel=1e-5)


def test_mlp_structure_and_inits():
    m = nn.MLP([10, 20, 30, 4], activation="gelu", output_activation="sigmoid", dropout=0.5, batch_norm=True)
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Dropout", "Linear", "BatchNorm1d", "GELU", "Dropout",
                     "Linear", "Sigmoid"]
    for scheme, expected_std in [("kaiming_normal", np.sqrt(2 / 400)), ("kaiming_uniform", np.sqrt(2 / 400)),
                                 ("xavier_normal", np.sqrt(2 / 700)), ("xavier_uniform", np.sqrt(2 / 700))]:
        w = nn.MLP([400, 300], init=scheme, rng=0)[0].weight.data
        assert abs(w.std() - expected_std) < 0.03 * expected_std, scheme
        assert not nn.MLP([400, 300], init=scheme, rng=0)[0].bias.data.any()
    with pytest.raises(ValueError, match="init='he' is not valid"):
        nn.MLP([2, 2], init="he")


# -- checkpoints -------------------------------------------------------------------------

def trained_model():
    d = data.moons(n=200, seed=0)
    model = nn.Sequential(nn.Standardize.fit(d.X_train),
                          nn.MLP([2, 16, 2], activation="leaky_relu", batch_norm=True, dropout=0.1, rng=0))
    train.fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01),
              data.DataLoader(d.X_train, d.y_train, 16, shuffle=True, seed=0), 3, log=None)
    return model.eval(), d


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    model, d = trained_model()
    path = checkpoint.save(model, tmp_path / "m.npz", meta={"classes": ["a", "b"]})
    loaded, meta = checkpoint.load(path, return_meta=True)
    assert meta == {"classes": ["a", "b"]}
    np.testing.assert_array_equal(loaded(d.X_test), model(d.X_test))
    assert not loaded.training


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, d = trained_model()
    path = checkpoint.save(model, tmp_path / "m.npz")
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(nn.MLP([2, 3, 2]), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]          # no temporary left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_checkpoints_raise_a_clear_error(tmp_path, damage):
    model, _ = trained_model()
    path = checkpoint.save(model, tmp_path / "m.npz")
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(checkpoint.CheckpointError, match="m.npz: corrupted or truncated"):
        checkpoint.load(path)


def test_incompatible_and_foreign_files(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match="plain.npz: not a handydl checkpoint"):
        checkpoint.load(tmp_path / "plain.npz")
    model, _ = trained_model()
    path = checkpoint.save(model, tmp_path / "m.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["state/1.0.weight"] = np.zeros((3, 3), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match=r"bad.npz: incompatible checkpoint.*1.0.weight has shape \(3, 3\)"):
        checkpoint.load(tmp_path / "bad.npz")
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint file"):
        checkpoint.load(tmp_path / "missing.npz")


def test_saving_a_module_without_config_is_refused(tmp_path):
    class Custom(nn.Module):
        pass
    with pytest.raises(TypeError, match="Custom has no get_config"):
        checkpoint.save(nn.Sequential(Custom()), tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


def test_atomic_writes_keep_normal_permissions(tmp_path):
    import os
    model, _ = trained_model()
    path = checkpoint.save(model, tmp_path / "m.npz")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
