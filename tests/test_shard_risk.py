"""Fraud rules on an AccountShard's charging path, on a real RocksDB: risk state in the same
batch as the charges, block notifications, blocked accounts, idempotency across reopen."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs
from test_account_shard import charge_with_disk_full, open_shard, seed
from test_accounts import EUR, T0, rated

from actors.engines import engine_factory
from actors.shard import ops
from actors.shard.engine import AccountShard
from actors.shard.keys import RISK_PREFIX
from actors.shard.risk import decode_risk, encode_risk, load_risk
from actors.store.codec import CodecError
from billing.accounts import AccountStatus, Result
from billing.fraud import Action, FraudConfig, PremiumRule, RiskState, VelocityRule
from billing.notifications import Notification, NotificationKind
from billing.rated import RatedRecord
from billing.records import Service
from cluster.config import ConfigError, load_config, parse_config
from cluster.deploy.runtime import settings_of

ROOT = Path(__file__).resolve().parent.parent
INTL = "voice.international"


def velocity(action: Action = Action.ALERT) -> FraudConfig:
    rule = VelocityRule(calls=3, window_s=600, international_classes=(INTL,), action=action)
    return FraudConfig(velocity=rule, spend_spike=None, premium=None)


PREMIUM_BLOCK = FraudConfig(
    velocity=None,
    spend_spike=None,
    premium=PremiumRule(premium_prefixes=("49900",), premium_classes=(), action=Action.BLOCK),
)


def call(
    record_id: str, at_s: int, *, usage_class: str = INTL, number: str = "4471234"
) -> tuple[str, RatedRecord]:
    """A 60 s call of account A0 (msisdn 490) to ``number`` starting at ``at_s``."""
    base = rated(record_id, 60, msisdn="490", usage_class=usage_class, at_s=at_s)
    return "A0", replace(base, record=replace(base.record, called_number=number))


def fraud_notes(shard: AccountShard, account_id: str = "A0") -> list[Notification]:
    return [
        n
        for n in shard.run(ops.ListNotifications(account_id=account_id))
        if n.subject.startswith("fraud:")
    ]


def fraud_events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["rule"] for e in logs if e["event"] == "fraud_alert"]


def risk_rows(shard: AccountShard) -> list[tuple[bytes, bytes]]:
    return list(shard.store.scan_prefix(RISK_PREFIX))


def test_velocity_fires_once_and_a_block_is_a_listed_notification(tmp_path: Path) -> None:
    """Five international calls in ten minutes fire velocity once; as a block it is one
    ``account_blocked`` notification, listed, and the account is blocked."""
    shard = open_shard(tmp_path / "s", 1, fraud=velocity(Action.BLOCK))
    seed(shard, 1)
    with capture_logs() as logs:
        rows = shard.run(
            ops.ChargeBatch(items=[call(f"v{i}", T0 + 60 * i) for i in range(5)], at_s=T0 + 600)
        )
    assert {r.result for r in rows} == {Result.CHARGED}
    assert fraud_events(logs) == ["velocity"]
    [note] = fraud_notes(shard)
    assert note.kind is NotificationKind.ACCOUNT_BLOCKED and note.subject == "fraud:velocity"
    assert note.value("record_id") == "v2"  # the third call completes the window
    assert shard.run(ops.GetAccount(account_id="A0")).account.status is AccountStatus.BLOCKED  # type: ignore[union-attr]
    state = load_risk(shard.core, "A0")
    assert state.blocked and state.velocity_fired_s == T0 + 120 and len(state.intl_starts_s) == 3
    assert shard.run(ops.Audit()).ok
    shard.close()


def test_velocity_alert_notifies_the_risk_desk_and_does_not_block(tmp_path: Path) -> None:
    """An ``alert`` is one ``fraud_alert`` event and one ``fraud_alert`` notification;
    the account stays active; national calls do not count."""
    shard = open_shard(tmp_path / "s", 1, fraud=velocity(Action.ALERT))
    seed(shard, 1)
    items = [
        call("n0", T0, usage_class="voice.national"),
        call("n1", T0 + 1, usage_class="voice.mobile"),
    ]
    items += [call(f"v{i}", T0 + 10 * i) for i in range(4)]
    with capture_logs() as logs:
        shard.run(ops.ChargeBatch(items=items, at_s=T0 + 600))
    assert fraud_events(logs) == ["velocity"]
    alerts = [
        n.subject
        for n in shard.run(ops.ListNotifications(account_id="A0"))
        if n.kind.value == "fraud_alert"
    ]
    assert alerts == ["velocity:v2"] and fraud_notes(shard) == []  # no block notification
    assert shard.run(ops.GetAccount(account_id="A0")).account.status is AccountStatus.ACTIVE  # type: ignore[union-attr]
    assert load_risk(shard.core, "A0").velocity_fired_s == T0 + 20
    shard.close()


def test_premium_block_refuses_online_charges_and_still_charges_offline(tmp_path: Path) -> None:
    """A call to a premium prefix blocks the account in the same batch: a later direct debit
    and an online batch are refused ACCOUNT_BLOCKED, offline usage is still charged."""
    shard = open_shard(tmp_path / "s", 1, fraud=PREMIUM_BLOCK)
    seed(shard, 1)
    rows = shard.run(
        ops.ChargeBatch(
            items=[call("p0", T0, usage_class="voice.national", number="49900123")], at_s=T0
        )
    )
    assert rows[0].result is Result.CHARGED  # the usage happened: charged, then blocked
    assert shard.run(ops.GetAccount(account_id="A0")).account.status is AccountStatus.BLOCKED  # type: ignore[union-attr]
    assert [n.subject for n in fraud_notes(shard)] == ["fraud:premium"]
    _, online = call("d1", T0 + 60, usage_class="voice.national")
    assert shard.run(ops.DirectDebit(account_id="A0", rated=online, at_s=T0)).result is (
        Result.ACCOUNT_BLOCKED
    )
    refused = shard.run(ops.ChargeBatch(items=[call("o1", T0 + 120)], at_s=T0, offline=False))
    assert refused[0].result is Result.ACCOUNT_BLOCKED
    offline = shard.run(ops.ChargeBatch(items=[call("o2", T0 + 180)], at_s=T0))
    assert offline[0].result is Result.CHARGED
    shard.close()


def test_resubmitted_records_do_not_fire_again(tmp_path: Path) -> None:
    """The same records resubmitted are duplicates: not evaluated, no alert, no notification,
    the risk row unchanged; a record twice in one batch counts once."""
    shard = open_shard(tmp_path / "s", 1, fraud=velocity(Action.BLOCK))
    seed(shard, 1)
    first = [call("v0", T0), call("v1", T0 + 10), call("v1", T0 + 10)]
    shard.run(ops.ChargeBatch(items=first, at_s=T0))
    assert load_risk(shard.core, "A0").intl_starts_s == (T0, T0 + 10)  # v1 once, no firing
    items = [*first, call("v2", T0 + 20)]
    with capture_logs() as logs:
        shard.run(ops.ChargeBatch(items=items, at_s=T0))
    assert fraud_events(logs) == ["velocity"]
    stored = risk_rows(shard)
    with capture_logs() as logs:
        replay = shard.run(ops.ChargeBatch(items=items, at_s=T0 + 60))
    assert {r.result for r in replay} == {Result.DUPLICATE}
    assert fraud_events(logs) == []
    assert risk_rows(shard) == stored
    assert len(fraud_notes(shard)) == 1
    shard.close()


def test_risk_state_survives_reopen(tmp_path: Path) -> None:
    """Two calls before a restart and one after fire the rule (the starts were kept); a
    fourth after another restart does not fire again inside the window."""
    path = tmp_path / "s"
    shard = open_shard(path, 1, fraud=velocity())
    seed(shard, 1)
    shard.run(ops.ChargeBatch(items=[call("v0", T0), call("v1", T0 + 10)], at_s=T0))
    shard.close()
    shard = open_shard(path, 2, fraud=velocity())
    with capture_logs() as logs:
        shard.run(ops.ChargeBatch(items=[call("v2", T0 + 20)], at_s=T0))
    assert fraud_events(logs) == ["velocity"]
    shard.close()
    shard = open_shard(path, 3, fraud=velocity())
    with capture_logs() as logs:
        shard.run(ops.ChargeBatch(items=[call("v3", T0 + 30)], at_s=T0))
    assert fraud_events(logs) == []
    assert load_risk(shard.core, "A0").velocity_fired_s == T0 + 20
    shard.close()


def test_batch_whose_commit_fails_leaves_no_risk_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed commit stores neither the charges nor the risk state; the retried batch
    counts each call once (two calls: no firing yet)."""
    shard = open_shard(tmp_path / "s", 1, fraud=velocity())
    seed(shard, 1)
    items = [call("v0", T0), call("v1", T0 + 10)]
    charge_with_disk_full(shard, items, monkeypatch)
    assert risk_rows(shard) == []
    with capture_logs() as logs:
        assert {r.result for r in shard.run(ops.ChargeBatch(items=items, at_s=T0))} == {
            Result.CHARGED
        }
    assert fraud_events(logs) == []
    assert load_risk(shard.core, "A0").intl_starts_s == (T0, T0 + 10)
    shard.close()


def test_no_fraud_config_writes_no_risk_rows(tmp_path: Path) -> None:
    """Without a fraud configuration nothing is evaluated: premium and international calls
    are charged and no ``k/`` key is written."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 2)
    items = [call(f"v{i}", T0 + i, number="49900123") for i in range(5)]
    items.append(("A1", rated("s1", 1, msisdn="491", service=Service.SMS, usage_class="sms.x")))
    assert {r.result for r in shard.run(ops.ChargeBatch(items=items, at_s=T0))} == {Result.CHARGED}
    assert risk_rows(shard) == []
    assert shard.run(ops.GetAccount(account_id="A0")).account.status is AccountStatus.ACTIVE  # type: ignore[union-attr]
    shard.close()


def test_risk_state_encoding_round_trips() -> None:
    """Every field of a risk state survives its row encoding."""
    state = RiskState(
        intl_starts_s=(1, 5, 9),
        velocity_fired_s=9,
        cycle_id="2024-06",
        cycle_spend=7 * EUR,
        history=(1, 2, 3),
        spike_fired=True,
        blocked=True,
    )
    assert decode_risk(encode_risk(state)) == state
    assert decode_risk(encode_risk(RiskState())) == RiskState()


def test_risk_rows_of_other_layouts() -> None:
    """A row written before a field was appended reads with its default; a row with more
    fields than this code knows, or another tag, is refused."""
    older = b"K" + msgpack.packb(((1, 2), 2, "2024-06", 5, (), False), use_bin_type=True)
    assert decode_risk(older) == RiskState(
        intl_starts_s=(1, 2), velocity_fired_s=2, cycle_id="2024-06", cycle_spend=5
    )
    newer = b"K" + msgpack.packb(((), None, None, 0, (), False, False, "x"), use_bin_type=True)
    for raw in (newer, b"A" + older[1:]):
        with pytest.raises(CodecError):
            decode_risk(raw)


def test_fraud_table_reaches_the_account_shards(tmp_path: Path) -> None:
    """A ``[fraud]`` table in the cluster TOML becomes the FraudConfig of every account shard
    the engine factory opens; without it the shards have none."""
    conf = tmp_path / "cluster.toml"
    conf.write_text(
        '[fraud.velocity]\ncalls = 4\ninternational_classes = ["voice.international_z1"]\n'
        '[fraud.premium]\npremium_prefixes = ["49900"]\naction = "alert"\n'
    )
    for config, expected in (
        (
            load_config(conf),
            FraudConfig(
                velocity=VelocityRule(calls=4, international_classes=("voice.international_z1",)),
                spend_spike=None,
                premium=PremiumRule(premium_prefixes=("49900",), action=Action.ALERT),
            ),
        ),
        (parse_config({}), None),
    ):
        settings = settings_of(config, data_dir=tmp_path, tariffs_dir=ROOT / "conf" / "tariffs")
        settings.update(shards=1, partitions=1)
        shard = engine_factory(settings)("acct-00", tmp_path / f"u{expected is None}", 1)
        assert isinstance(shard, AccountShard)
        assert shard.core.fraud == expected
        shard.close()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[fraud.velocity]\ncallz = 3\n", "fraud.velocity.callz: unknown key"),
        ("[fraud.velocityy]\n", "fraud.velocityy: unknown key"),
        ("[fraud.velocity]\ncalls = 0\n", "fraud.velocity.calls: must be > 0"),
        ('[fraud.premium]\naction = "ban"\n', "fraud.premium.action:"),
        ('[fraud.spend_spike]\nfactor = "x"\n', "fraud.spend_spike.factor: must be a number"),
        ("[fraud.spend_spike]\nmin_history = 4\n", "fraud.spend_spike.min_history: must be <="),
    ],
)
def test_bad_fraud_key_names_the_file_and_the_key(tmp_path: Path, toml: str, message: str) -> None:
    """A bad ``[fraud]`` key is refused with the file and the dotted key in the message."""
    conf = tmp_path / "cluster.toml"
    conf.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_config(conf)
    assert str(error.value).startswith(f"{conf}: {message}")
