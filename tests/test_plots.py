"""The run plots (npvae.plots) and the Ising observables (npvae.observables), on tiny models."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import npvae
from npvae import ising, observables
from npvae.data import Standardizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_pngs(paths):
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC, f"{p} is not a PNG"


def history(epochs=2):
    h = npvae.History()
    for e in range(1, epochs + 1):
        h.append({"epoch": e, "loss": 10.0 / e, "reconstruction": 9.0 / e, "kl": 1.0, "beta": 1.0,
                  "val_elbo": -10.0 / e})
    return h


# ----------------------------------------------------------------------------------------
# Observables: hand-computed values (L = 4, periodic, J = 1, each bond once)
# ----------------------------------------------------------------------------------------
L = 4
ALL_UP = np.ones((1, L * L))
CHECKER = (np.indices((L, L)).sum(axis=0) % 2).reshape(1, -1).astype(float)


def test_all_up_lattice_has_full_magnetisation_and_ground_state_energy():
    assert observables.magnetisation(ALL_UP, L) == pytest.approx([1.0])
    assert observables.energy_per_spin(ALL_UP, L) == pytest.approx([-2.0])
    assert observables.magnetisation(1 - ALL_UP, L) == pytest.approx([-1.0])
    assert observables.energy_per_spin(1 - ALL_UP, L) == pytest.approx([-2.0])


def test_checkerboard_has_zero_magnetisation_and_energy_plus_two():
    assert observables.magnetisation(CHECKER, L) == pytest.approx([0.0])
    assert observables.energy_per_spin(CHECKER, L) == pytest.approx([2.0])


def test_one_flipped_spin():
    x = ALL_UP.copy()
    x[0, 5] = 0  # 15 up, 1 down: m = 14/16; its 4 bonds turn from −1 to +1: E = −32 + 8
    assert observables.magnetisation(x, L) == pytest.approx([14 / 16])
    assert observables.energy_per_spin(x, L) == pytest.approx([-24 / 16])


def test_energy_agrees_with_the_monte_carlo_code():
    spins = np.where(np.random.default_rng(0).random((5, 6, 6)) < 0.5, -1, 1)
    expected = [ising.energy_per_spin(s.astype(np.int64)) for s in spins]
    assert observables.energy_per_spin(ising.as_bernoulli(spins), 6) == pytest.approx(expected)
    assert observables.magnetisation(ising.as_bernoulli(spins), 6) == pytest.approx(spins.mean(axis=(1, 2)))


def test_summary_table_per_temperature():
    x = np.concatenate([np.repeat(ALL_UP, 3, axis=0), np.repeat(CHECKER, 2, axis=0)]).astype(np.float32)
    T = np.array([1.0] * 3 + [5.0] * 2)
    model = npvae.VAE(L * L, 2, hidden=(8,), seed=0)
    comp = observables.compare(model, x, L, T, n_prior=50, seed=1)
    assert comp["prior"]["abs_m"].shape == (50,) and comp["posterior"]["energy"].shape == (5,)
    table = json.loads(json.dumps(observables.summary_table(comp)))
    cold, hot = table["by_temperature"]
    assert (cold["T"], cold["n"], hot["T"], hot["n"]) == (1.0, 3, 5.0, 2)
    assert cold["data_abs_m"] == pytest.approx(1.0) and cold["data_energy"] == pytest.approx(-2.0)
    assert hot["data_abs_m"] == pytest.approx(0.0) and hot["data_energy"] == pytest.approx(2.0)
    assert cold["onsager_M"] == pytest.approx(float(ising.onsager_magnetisation(1.0)))
    assert hot["onsager_M"] == 0.0
    for row in (cold, hot):
        assert 0 <= row["posterior_abs_m"] <= 1 and -2 <= row["posterior_energy"] <= 2
    assert table["overall"]["data"]["abs_m"] == pytest.approx(0.6)


# ----------------------------------------------------------------------------------------
# Which plots, which dimensions, which units
# ----------------------------------------------------------------------------------------
def test_image_shape_is_decided_by_the_caller():
    from npvae import plots
    assert plots.image_shape_for(16, False) is None
    assert plots.image_shape_for(16, True) == (4, 4)
    assert plots.image_shape_for(784, True) == (28, 28)
    with pytest.raises(ValueError):
        plots.image_shape_for(15, True)
    assert plots.image_shape_for(16) == (4, 4)  # the old guess, for old callers


def test_latent_dims_are_the_top_kl_ones():
    from npvae import plots
    model = npvae.VAE(10, 8, hidden=(), seed=0, dtype=np.float64)
    for k in ("encoder.mu.W", "encoder.mu.b", "encoder.logvar.W", "encoder.logvar.b"):
        model.params[k][...] = 0
    model.params["encoder.mu.W"][:, 5] = 3.0  # KL_j = ½ μ_j² with ln σ² = 0
    model.params["encoder.mu.W"][:, 2] = 1.0
    model.params["encoder.mu.W"][:, 7] = 0.1
    x = np.random.default_rng(0).random((20, 10))
    dims, kl = plots.top_kl_dims(model, x, 2)
    assert list(dims) == [5, 2]
    assert kl[5] > kl[2] > kl[7] > 0 and kl[0] == 0
    assert list(plots.top_kl_dims(model, x, 4)[0]) == [5, 2, 7, 0]


def test_samples_are_draws_in_data_units():
    from npvae import plots
    model = npvae.VAE(3, 2, hidden=(4,), likelihood="gaussian", seed=0)
    st = Standardizer(mean=[100.0, 100.0, 100.0], std=[2.0, 2.0, 2.0])
    s = plots.draw_samples(model, 400, seed=0, to_data_units=st.inverse)
    assert s.shape == (400, 3) and abs(s.mean() - 100) < 1.5 and 1.0 < s.std() < 10
    bern = npvae.VAE(16, 2, hidden=(4,), seed=0)
    draws = plots.draw_samples(bern, 50)
    assert set(np.unique(draws)) <= {0.0, 1.0}  # x ~ p(x|z), not decoder means


def test_samples_figure_for_each_kind(tmp_path):
    pytest.importorskip("matplotlib")
    from npvae import plots
    tab = npvae.VAE(3, 2, hidden=(4,), likelihood="gaussian", seed=0)
    st = Standardizer(mean=[100.0, -5.0, 1e6], std=[2.0, 0.1, 1e4])
    x = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    img = npvae.VAE(16, 2, hidden=(4,), seed=0)
    paths = [plots.samples(tab, tmp_path / "tab.png", n=20, data=x, to_data_units=st.inverse),
             plots.samples(tab, tmp_path / "tab_nodata.png", n=20),
             plots.samples(img, tmp_path / "img.png", n=9, image_shape=(4, 4)),
             plots.samples(img, tmp_path / "img_data.png", n=9, image_shape=(4, 4),
                           data=np.random.default_rng(1).random((9, 16)))]
    assert_pngs(paths)


def test_tabular_data_gets_marginals_and_pairs_not_image_grids(tmp_path):
    pytest.importorskip("matplotlib")
    from npvae import plots
    model = npvae.VAE(16, 3, hidden=(8,), likelihood="gaussian", seed=0)
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    st = Standardizer(mean=np.full(16, 100.0), std=np.linspace(1, 50, 16))
    paths = plots.write_all(model, history(), x, np.arange(40), tmp_path, "index",
                            image_shape=None, to_data_units=st.inverse)
    names = {p.name for p in paths}
    assert {"marginals.png", "pairs.png", "reconstructions.png", "latent_traversal.png",
            "latent_scatter.png", "training_curves.png"} <= names
    assert "prior_samples.png" not in names and not (tmp_path / "prior_samples.png").exists()
    assert_pngs(paths)


def test_image_data_gets_grids_and_ising_gets_observables(tmp_path):
    pytest.importorskip("matplotlib")
    from npvae import plots
    model = npvae.VAE(16, 3, hidden=(8,), seed=0)
    rng = np.random.default_rng(0)
    x = (rng.random((30, 16)) < 0.5).astype(np.float32)
    T = np.repeat([1.5, 2.5, 3.5], 10)
    paths = plots.write_all(model, history(), x, T, tmp_path, "temperature", ising_L=4)
    names = {p.name for p in paths}
    assert {"prior_samples.png", "reconstructions.png", "latent_traversal.png",
            "ising_observables.png", "ising_observables.json"} <= names
    assert "marginals.png" not in names
    assert_pngs(paths)
    table = json.loads((tmp_path / "ising_observables.json").read_text())
    assert [r["T"] for r in table["by_temperature"]] == [1.5, 2.5, 3.5]


def test_old_call_form_still_works(tmp_path):
    pytest.importorskip("matplotlib")
    from npvae import plots
    model = npvae.VAE(16, 2, hidden=(8,), seed=0)
    x = np.random.default_rng(0).random((12, 16)).astype(np.float32)
    names = {p.name for p in plots.write_all(model, history(), x, np.arange(12), tmp_path)}
    assert "prior_samples.png" in names  # 16 = 4², the old guess: images


@pytest.mark.parametrize("case", ["one_latent", "one_input", "two_inputs", "few_rows_constant_huge",
                                  "huge_raw_values"])
def test_edge_cases_do_not_crash(tmp_path, case):
    pytest.importorskip("matplotlib")
    from npvae import plots
    rng = np.random.default_rng(0)
    to_units, labels = None, None
    if case == "one_latent":
        model, x, shape = npvae.VAE(16, 1, hidden=(4,), seed=0), rng.random((20, 16)), (4, 4)
        labels = rng.integers(0, 3, 20)
    elif case == "one_input":
        model, x, shape = npvae.VAE(1, 2, hidden=(4,), likelihood="gaussian", seed=0), rng.standard_normal((20, 1)), None
    elif case == "two_inputs":
        model, x, shape = npvae.VAE(2, 1, hidden=(), likelihood="gaussian", seed=0), rng.standard_normal((20, 2)), None
        labels = rng.random(20)
    elif case == "huge_raw_values":  # an unstandardised model that overflows: KL inf
        model = npvae.VAE(3, 2, hidden=(4,), likelihood="gaussian", seed=0)
        x, shape, labels = rng.standard_normal((10, 3)) * 1e30, None, np.array(list("ababababab"))
    else:  # 3 rows; features: varying, constant 0, constant 5; data units around 1e30
        model = npvae.VAE(3, 3, hidden=(4,), likelihood="gaussian", seed=0)
        x, shape = np.zeros((3, 3)), None
        x[:, 0] = [1.0, 2.0, 3.0]
        to_units = Standardizer(mean=[1e30, 0, 5], std=[1e29, 1, 1]).inverse
    paths = plots.write_all(model, history(1), x.astype(np.float32), labels, tmp_path,
                            image_shape=shape, to_data_units=to_units)
    assert_pngs(paths)
    assert len(paths) >= 5


# ----------------------------------------------------------------------------------------
# What the figures say: labels, units, which features
# ----------------------------------------------------------------------------------------
@pytest.fixture
def figures(monkeypatch):
    """The figures the plots save, by file name (kept for inspection after saving)."""
    pytest.importorskip("matplotlib")
    from npvae import plots
    seen = {}
    real = plots._save

    def save(fig, path):
        seen[Path(path).name] = fig
        return real(fig, path)
    monkeypatch.setattr(plots, "_save", save)
    return seen


def texts(fig):
    import matplotlib.text
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def test_wide_tables_show_the_features_that_vary_and_name_them(tmp_path, figures):
    from npvae import plots
    rng = np.random.default_rng(0)
    x = np.full((300, 40), 0.01, dtype=np.float32)
    x[:, 20:28] = rng.random((300, 8))  # the only columns that vary, like an image's centre
    model = npvae.VAE(40, 2, hidden=(8,), seed=0)
    plots.write_all(model, history(), x, None, tmp_path, image_shape=None)
    for name, most in (("marginals.png", 16), ("pairs.png", plots.MAX_PAIRS),
                       ("reconstructions.png", 16), ("latent_traversal.png", 16)):
        said = " ".join(texts(figures[name]))
        named = {int(n) for n in re.findall(r"feature (\d+)", said)}
        varying = set(range(20, 28))
        assert varying <= named if most >= 8 else (len(named) == most and named <= varying), (name, named)
        assert "of 40 features that vary most" in said, name


def test_a_small_table_shows_every_feature_and_labels_every_axis(tmp_path, figures):
    from npvae import plots
    x = np.random.default_rng(0).standard_normal((100, 5)).astype(np.float32)
    model = npvae.VAE(5, 2, hidden=(8,), likelihood="gaussian", seed=0)
    plots.write_all(model, history(), x, None, tmp_path, image_shape=None)
    pairs = figures["pairs.png"]
    shown = [ax for ax in pairs.axes if ax.get_visible()]
    assert len(shown) == 5 * 6 // 2  # the lower triangle of 5 features, the diagonal included
    assert "feature 4" in texts(pairs) and "all 5 features" in " ".join(texts(pairs))
    for ax in shown:
        if ax.get_subplotspec().colspan.start == 0:
            assert ax.get_ylabel(), "a y label on every row"
    for ax in figures["marginals.png"].axes:
        if ax.get_visible() and ax.get_subplotspec().colspan.start == 0:
            assert "density" in ax.get_ylabel()


def test_training_curves_mark_short_runs_only_and_keep_legends_off_the_curves(tmp_path, figures):
    from npvae import plots
    for epochs in (3, 200):
        name = f"tc{epochs}.png"
        plots.training_curves(history(epochs), tmp_path / name)
        fig = figures[name]
        markers = {line.get_marker() for ax in fig.axes for line in ax.get_lines()}
        assert (markers - {"None", None, ""}) if epochs == 3 else markers <= {"None", None, ""}, markers
        fig.canvas.draw()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                box, area = legend.get_window_extent(), ax.get_window_extent()
                assert not box.overlaps(area), "a legend over the curves"


def test_ising_plots_show_spins_and_temperatures_in_units_of_j_over_kb(tmp_path, figures):
    from npvae import plots
    model = npvae.VAE(16, 2, hidden=(8,), seed=0)
    x = (np.random.default_rng(0).random((30, 16)) < 0.5).astype(np.float32)
    T = np.repeat([1.5, 2.5, 3.5], 10)
    plots.write_all(model, history(), x, T, tmp_path, "temperature", ising_L=4)
    for name in ("prior_samples.png", "reconstructions.png", "latent_traversal.png"):
        said = " ".join(texts(figures[name]))
        assert "s_i" in said and "pixel" not in said, name
    assert {"−1", "+1"} <= set(texts(figures["prior_samples.png"]))  # the spins' values
    for name in ("ising_observables.png", "latent_scatter.png"):
        assert "$T$ ($J/k_B$)" in " ".join(texts(figures[name])), name
    # an image run keeps its pixels
    plots.write_all(model, history(), x, None, tmp_path / "img", image_shape=(4, 4))
    assert "pixel value x_i" in texts(figures["prior_samples.png"])
