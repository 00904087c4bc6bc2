"""Tests of holstein_dist.symmetry: the ring's reflection and particle-hole symmetries and group averaging."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_model import SCALES, SIGNATURE, random_state, randomize_output_convs

from holstein_dist import physics, symmetry
from holstein_dist.checkpoints import load_model, model_payload, scale_increments
from holstein_dist.model import ModelConfig, build_model
from hpc import checkpoint as hpc_ckpt

L = 8


def physical_state(seed: int, g: float = 0.8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A thermal density matrix of a random lattice, with a small random anti-symmetric (current) part."""
    rng = np.random.default_rng(seed)
    Q, P = 0.3 * rng.normal(size=L), 0.2 * rng.normal(size=L)
    rho = physics.thermal_density_matrix(Q, g, kT=0.5)
    current = 0.01 * rng.normal(size=(L, L))
    rho = rho + 1j * (current - current.T)
    return torch.tensor(rho), torch.tensor(Q), torch.tensor(P)


def exact_derivative(state, g: float = 0.8):
    return tuple(torch.as_tensor(x) for x in physics.rhs(*(s.numpy() for s in state), g=g))


@pytest.mark.parametrize("element", symmetry.GROUP)
def test_the_equations_of_motion_commute_with_every_element(element):
    # The claim the whole module rests on: d/dt (g x) = g_linear (d/dt x) for the exact Ehrenfest equations.
    state = physical_state(1)
    lhs = exact_derivative(symmetry.act(element, state))
    rhs = symmetry.act(element, exact_derivative(state), linear=True)
    for a, b in zip(lhs, rhs, strict=True):
        assert torch.allclose(a, b, atol=1e-13)


def test_a_rotation_is_not_a_symmetry_so_the_check_above_can_fail():
    # Shifting Q by one site without rho breaks the coupling: the same comparison must then disagree.
    rho, Q, P = physical_state(2)
    moved = (rho, torch.roll(Q, 1), torch.roll(P, 1))
    lhs = exact_derivative(moved)
    rhs = (exact_derivative((rho, Q, P))[0], *(torch.roll(x, 1) for x in exact_derivative((rho, Q, P))[1:]))
    assert not torch.allclose(lhs[0], rhs[0], atol=1e-6)


@pytest.mark.parametrize("element", symmetry.GROUP)
def test_every_element_is_an_involution_that_keeps_rho_physical(element):
    state = physical_state(3)
    image = symmetry.act(element, state)
    back = symmetry.act(element, image)
    for a, b in zip(back, state, strict=True):
        assert torch.allclose(a, b, atol=1e-14)
    rho = image[0]
    assert torch.allclose(rho, rho.conj().T, atol=1e-14)
    assert torch.isclose(torch.diagonal(rho).real.sum(), torch.tensor(L / 2, dtype=torch.float64))


def test_particle_hole_maps_occupations_to_holes():
    rho, Q, P = physical_state(4)
    rho_h, Q_h, P_h = symmetry.particle_hole(rho, Q, P)
    assert torch.allclose(torch.diagonal(rho_h).real, 1 - torch.diagonal(rho).real)
    assert torch.equal(Q_h, -Q) and torch.equal(P_h, -P)


def test_an_odd_ring_has_no_particle_hole_symmetry():
    with pytest.raises(ValueError, match="even ring only"):
        symmetry.particle_hole(torch.eye(5, dtype=torch.complex128) / 2, torch.zeros(5), torch.zeros(5))


def test_unknown_element_is_refused():
    with pytest.raises(ValueError, match="unknown symmetry 'rotation'"):
        symmetry.act("rotation", physical_state(5))


@pytest.mark.parametrize("kind", ["simple", "parc"])
def test_a_symmetrized_model_is_exactly_equivariant_and_a_plain_one_is_not(kind):
    model = build_model(ModelConfig(kind=kind, channels=4, n_blocks=1), SCALES).double().eval()
    randomize_output_convs(model, seed=6)
    state = tuple(x.double() if not x.is_complex() else x.to(torch.complex128) for x in random_state(3, L, 7))

    def gap(element: str) -> float:
        direct = model.step(*symmetry.act(element, state))
        mapped = symmetry.act(element, model.step(*state))
        return max(float((a - b).abs().max()) for a, b in zip(direct, mapped, strict=True))

    assert gap("reflection") > 1e-6 and gap("particle_hole") > 1e-6  # a CNN is not equivariant by itself
    model.symmetrize()
    for element in symmetry.GROUP:
        assert gap(element) < 1e-12


def test_symmetrized_derivative_and_increment_are_group_averages():
    model = build_model(ModelConfig(kind="parc", channels=4, n_blocks=1), SCALES).double().eval()
    randomize_output_convs(model, seed=8)
    rho, Q, P = random_state(2, L, 9)
    state = (rho.to(torch.complex128), Q.double(), P.double())
    with torch.no_grad():
        expected_inc, expected_der = [], []
        for element in symmetry.GROUP:
            inc, der = model.increment(*symmetry.act(element, state))
            expected_inc.append(symmetry.act(element, inc, linear=True))
            expected_der.append(symmetry.act(element, der, linear=True))
        inc, der = symmetry.symmetrized(model.increment, *state)
    for got, parts in ((inc, expected_inc), (der, expected_der)):
        for k, x in enumerate(got):
            assert torch.allclose(x, torch.stack([p[k] for p in parts]).mean(0), atol=1e-14)


def test_symmetrize_travels_in_exported_files_and_old_files_load_without_it(tmp_path):
    model = build_model(ModelConfig(kind="simple", channels=4, n_blocks=1), SCALES)
    payload = model_payload(model, SIGNATURE)
    del payload["model_config"]["symmetrize"]  # a file written before the switch existed
    hpc_ckpt.atomic_save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.symmetrize is False
    scale_increments(tmp_path / "old.pt", 0.99, tmp_path / "sym.pt", symmetrize=True)
    loaded = load_model(tmp_path / "sym.pt")
    assert loaded.config == dataclasses.replace(model.config, symmetrize=True)


def test_a_run_checkpointed_before_the_switch_existed_still_resumes(tmp_path):
    from holstein_dist.checkpoints import check_resumable

    model = build_model(ModelConfig(kind="simple", channels=4, n_blocks=1), SCALES)
    payload = model_payload(model, SIGNATURE)
    del payload["model_config"]["symmetrize"]
    check_resumable(payload, tmp_path / "step-00000010.pt", model)  # the default fills the missing field
    for change in ({"channels": 8}, {"unknown_field": 1}):
        other = {**payload, "model_config": {**payload["model_config"], **change}}
        with pytest.raises(hpc_ckpt.CheckpointError, match="holds a different model"):
            check_resumable(other, tmp_path / "step-00000010.pt", model)
