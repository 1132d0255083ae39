"""Keys: the stored file holds no secret, scope → 403, expiry by the injected clock, revocation
and rotation seen on the next request without a restart, admin vs user, constant-time compare."""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from aiboxctl.access.keys import KeyLimits, KeyRing, KeyStore
from aiboxctl.access.refusal import AccessDenied
from aiboxctl.errors import UsageError


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_file_holds_only_a_salted_hash_and_is_0600(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    a = store.add("alice", KeyLimits(models=("qwen",)), now=1.0)
    b = store.add("bob", KeyLimits(), now=1.0)
    raw = (tmp_path / "keys.json").read_text()
    for issued in (a, b):
        assert issued.secret.startswith("sk-aibox-")
        secret_part = issued.secret.rsplit("-", 1)[-1]
        assert issued.secret not in raw and secret_part not in raw
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600
    doc = json.loads(raw)
    assert {k["salt"] for k in doc["keys"]} and len({k["salt"] for k in doc["keys"]}) == 2


def test_authenticate_scope_and_admin(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    user = store.add("alice", KeyLimits(models=("qwen",), department="legal"), now=1.0)
    admin = store.add("root", KeyLimits(admin=True), now=1.0)
    ring = KeyRing(tmp_path / "keys.json", now=Clock())
    rec = ring.authenticate(f"Bearer {user.secret}")
    assert rec.name == "alice" and rec.department == "legal"
    ring.authorize(rec, "qwen")
    with pytest.raises(AccessDenied) as exc:
        ring.authorize(rec, "deepseek")
    assert exc.value.status == 403 and exc.value.body()["error"]["code"] == "model_not_allowed"
    assert set(exc.value.body()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(AccessDenied) as exc:
        ring.require_admin(rec)
    assert exc.value.status == 403
    ring.require_admin(ring.authenticate(f"Bearer {admin.secret}"))
    ring.authorize(ring.authenticate(f"Bearer {admin.secret}"), "anything")  # no --models: every model


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer sk-aibox-zzzzzzzzzzzz-x",
                                    "Bearer sk-aibox-0123456789ab-wrongsecret"])
def test_missing_or_wrong_key_is_401(tmp_path, header):
    KeyStore(tmp_path / "keys.json").add("alice", KeyLimits(), now=1.0)
    with pytest.raises(AccessDenied) as exc:
        KeyRing(tmp_path / "keys.json").authenticate(header)
    assert exc.value.status == 401 and exc.value.headers()["WWW-Authenticate"] == "Bearer"


def test_right_id_wrong_secret_is_401(tmp_path):
    issued = KeyStore(tmp_path / "keys.json").add("alice", KeyLimits(), now=1.0)
    forged = issued.secret[:-4] + ("AAAA" if not issued.secret.endswith("AAAA") else "BBBB")
    with pytest.raises(AccessDenied):
        KeyRing(tmp_path / "keys.json").authenticate(f"Bearer {forged}")


def test_expiry_follows_the_injected_clock(tmp_path):
    clock = Clock(1000.0)
    issued = KeyStore(tmp_path / "keys.json").add("temp", KeyLimits(expires_at=2000.0), now=1000.0)
    ring = KeyRing(tmp_path / "keys.json", now=clock)
    assert ring.authenticate(f"Bearer {issued.secret}").name == "temp"
    clock.t = 2000.0
    with pytest.raises(AccessDenied) as exc:
        ring.authenticate(f"Bearer {issued.secret}")
    assert exc.value.status == 401 and "expired" in exc.value.message


def test_revoke_and_rotate_take_effect_on_the_next_request(tmp_path):
    path = tmp_path / "keys.json"
    store = KeyStore(path)
    a = store.add("alice", KeyLimits(), now=1.0)
    b = store.add("bob", KeyLimits(rpm=5), now=1.0)
    ring = KeyRing(path)
    assert ring.authenticate(f"Bearer {a.secret}").name == "alice"
    store.revoke("alice", now=2.0)
    with pytest.raises(AccessDenied) as exc:
        ring.authenticate(f"Bearer {a.secret}")
    assert "revoked" in exc.value.message
    new_b = store.rotate("bob", now=3.0)
    with pytest.raises(AccessDenied):
        ring.authenticate(f"Bearer {b.secret}")
    rec = ring.authenticate(f"Bearer {new_b.secret}")
    assert rec.name == "bob" and rec.rpm == 5  # limits survive rotation


def test_bad_names_limits_and_duplicates_are_usage_errors(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    store.add("alice", KeyLimits(), now=1.0)
    with pytest.raises(UsageError, match="exists"):
        store.add("alice", KeyLimits(), now=1.0)
    with pytest.raises(UsageError, match="not valid"):
        store.add("../x", KeyLimits(), now=1.0)
    with pytest.raises(UsageError, match="--rpm"):
        store.add("carol", KeyLimits(rpm=0), now=1.0)


def test_a_damaged_key_file_is_one_usage_error(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(UsageError) as exc:
        KeyRing(path).authenticate("Bearer sk-aibox-0123456789ab-x")
    assert exc.value.code == "invalid_data_file"


def test_compare_is_constant_time():
    """The secret check goes through hmac.compare_digest, also for an unknown id."""
    src = Path(__file__).parents[1] / "src" / "aiboxctl" / "access" / "keys.py"
    tree = ast.parse(src.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "authenticate")
    calls = [ast.unparse(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)]
    assert "hmac.compare_digest" in calls
    compares = [n for n in ast.walk(fn) if isinstance(n, ast.Compare) and any(isinstance(o, (ast.Eq, ast.NotEq))
                                                                            for o in n.ops)]
    assert not [ast.unparse(c) for c in compares if "hash" in ast.unparse(c)]


def test_an_imported_wave1_key_keeps_its_secret_and_only_its_hash_is_stored(tmp_path):
    from aiboxctl.access.keys import KeyLimits, KeyRing, KeyStore

    store = KeyStore(tmp_path / "keys.json")
    old = "sk-aibox-Zq3_plaintext-from-wave-one-0123456789"
    record = store.import_key("alice", old, KeyLimits(), now=1.0)
    assert record is not None and store.import_key("again", old, KeyLimits(), now=2.0) is None  # once
    assert old not in (tmp_path / "keys.json").read_text()
    ring = KeyRing(tmp_path / "keys.json")
    assert ring.authenticate(f"Bearer {old}").name == "alice"
    with pytest.raises(AccessDenied):
        ring.authenticate(f"Bearer {old}x")
