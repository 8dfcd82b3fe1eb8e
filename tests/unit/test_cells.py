"""Tenant -> cell consistent hashing: stable, even, ~1/N moved by a new cell, failover to the next
cell on the ring; and the cells YAML that `museserve ops --cell` reads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from museserve.ops.cells import cell_cluster, cell_for, cells_in_order, load_cells, shares

TENANTS = [f"tenant-{i}" for i in range(20_000)]
CELLS = [f"cell-{i}" for i in range(10)]


def test_assignment_is_stable_and_ignores_cell_order():
    assert [cell_for(t, CELLS) for t in TENANTS[:200]] == [cell_for(t, reversed(CELLS)) for t in TENANTS[:200]]


def test_assignment_is_the_same_in_another_process():
    # Python's hash() is salted per process; the ring must not be.
    code = "from museserve.ops.cells import cell_for; print(cell_for('acme', [f'cell-{i}' for i in range(10)]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == cell_for("acme", CELLS)


def test_tenants_spread_evenly():
    s = shares(TENANTS, CELLS)
    assert max(s.values()) < 1.15 / len(CELLS) and min(s.values()) > 0.85 / len(CELLS)


def test_adding_a_cell_moves_about_one_in_n_and_only_to_it():
    before = {t: cell_for(t, CELLS) for t in TENANTS}
    grown = [*CELLS, "cell-10"]
    after = {t: cell_for(t, grown) for t in TENANTS}
    moved = [t for t in TENANTS if before[t] != after[t]]
    assert 0.07 < len(moved) / len(TENANTS) < 0.115  # 1/11 = 0.091
    assert {after[t] for t in moved} == {"cell-10"}


def test_a_failed_cell_sends_only_its_tenants_to_the_next_cell_on_the_ring():
    down = "cell-3"
    for tenant in TENANTS[:2000]:
        order = cells_in_order(tenant, CELLS)
        assert sorted(order) == sorted(CELLS)
        moved = cell_for(tenant, CELLS, down=[down])
        assert moved == (order[1] if order[0] == down else order[0])
    # the tenants of the failed cell spread over the others, not onto one neighbour
    orphans = [t for t in TENANTS if cell_for(t, CELLS) == down]
    assert len({cell_for(t, CELLS, down=[down]) for t in orphans}) >= 8


def test_no_cell_up_is_an_error():
    with pytest.raises(ValueError, match="every cell is down"):
        cell_for("acme", ["a", "b"], down=["a", "b"])
    with pytest.raises(ValueError, match="no cell"):
        cell_for("acme", [])


def test_cells_yaml(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text(
        "cells:\n  eu-1: {context: prod-eu-1, namespace: muse}\n  us-1: {kubeconfig: /k/us.yaml}\n  ap-1:\n"
    )
    cells = load_cells(path)
    assert sorted(cells) == ["ap-1", "eu-1", "us-1"]
    assert (cells["eu-1"].context, cells["eu-1"].namespace, cells["eu-1"].kubeconfig) == ("prod-eu-1", "muse", None)
    assert cell_cluster(path, "us-1").kubeconfig == "/k/us.yaml"
    with pytest.raises(ValueError, match=r"--cell mars: not in .* \(cells: ap-1, eu-1, us-1\)"):
        cell_cluster(path, "mars")
    path.write_text("cells:\n  eu-1: {region: eu}\n")
    with pytest.raises(ValueError, match="cells.eu-1: unknown key region"):
        load_cells(path)


def test_ops_cell_selects_the_cells_kubeconfig(tmp_path, monkeypatch, capsys):
    from museserve.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cells = tmp_path / "cells.yaml"
    cells.write_text(f"cells:\n  eu-1: {{kubeconfig: {tmp_path / 'eu-1.kubeconfig'}}}\n")
    assert main(["ops", "status", "--cell", "eu-1", "--cells", str(cells)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("museserve ops: no Kubernetes cluster") and "eu-1.kubeconfig" in err, err
    assert main(["ops", "status", "--cell", "us-1", "--cells", str(cells)]) == 2
    assert "--cell us-1: not in" in capsys.readouterr().err
