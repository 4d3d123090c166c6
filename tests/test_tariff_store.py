"""The catalogue in force for a data dir: persisted copies, the pointer to one, and hosts
that open (or switch) their units with it. Real files, real RocksDB, no Ray."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from actors.remote import RoutedHost
from actors.store.tariffs import TariffsExist, current_tariffs_dir, persist_tariffs, set_current

ROOT = Path(__file__).resolve().parent.parent
TARIFFS = ROOT / "conf" / "tariffs"


def _dearer(tmp_path: Path) -> Path:
    folder = tmp_path / "dearer"
    shutil.copytree(TARIFFS, folder)
    rates = folder / "rates.toml"
    rates.write_text(rates.read_text().replace('price = "0.19"', 'price = "0.38"'))
    return folder


def _z1_price(engine: Any) -> int:
    catalogue = engine.core.catalogue if hasattr(engine, "core") else engine.catalogue
    price: int = catalogue.rates["V_INT_Z1"].tiers[0].price
    return price


def test_a_persisted_catalogue_is_in_force_once_current(tmp_path: Path) -> None:
    """A copy is kept under its name (again: the same copy), another catalogue under that
    name is refused, and the pointer decides which folder is in force."""
    data = tmp_path / "data"
    assert current_tariffs_dir(data, TARIFFS) == str(TARIFFS)
    dearer = _dearer(tmp_path)
    kept = persist_tariffs(dearer, data, "v2")
    assert persist_tariffs(dearer, data, "v2") == kept
    with pytest.raises(TariffsExist):
        persist_tariffs(TARIFFS, data, "v2")
    with pytest.raises(ValueError):
        persist_tariffs(TARIFFS, data, "../escape")
    assert current_tariffs_dir(data, TARIFFS) == str(TARIFFS)  # kept, not yet in force
    set_current(data, "v2")
    assert current_tariffs_dir(data, TARIFFS) == str(kept)


def test_hosts_open_units_with_the_catalogue_in_force_and_switch_running_ones(
    tmp_path: Path,
) -> None:
    """A unit opened after a load (a takeover) uses the persisted catalogue; units already
    running switch when told to."""
    data = tmp_path / "data"
    settings = {"shards": 2, "partitions": 1, "tariffs_dir": str(TARIFFS)}
    host = RoutedHost(node="n1", data_dir=str(data), settings=settings)
    try:
        host.open_unit("part-0", 1)
        host.open_unit("acct-00", 1)
        engines = {u: host._units[u].engine for u in ("part-0", "acct-00")}
        [base] = {_z1_price(e) for e in engines.values()}

        kept = persist_tariffs(_dearer(tmp_path), data, "v2")
        set_current(data, "v2")
        host.open_unit("acct-01", 1)  # opened after the load, as after a takeover
        assert _z1_price(host._units["acct-01"].engine) == 2 * base
        assert {_z1_price(e) for e in engines.values()} == {base}  # not switched yet
        assert host.load_catalogue(str(kept), "account") == ["acct-00", "acct-01"]
        assert host.load_catalogue(str(kept), "partition") == ["part-0"]
        assert {_z1_price(e) for e in engines.values()} == {2 * base}
        core = engines["acct-00"].core
        assert core.tariff.catalogue is core.catalogue
    finally:
        host.close_all()
