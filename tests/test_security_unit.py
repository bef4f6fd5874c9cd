"""The pure security layer: password rules and hashing, tokens and codes, client addresses, assurance, throttling."""

from __future__ import annotations

import re
import string

import pytest
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from hypothesis import given, settings
from hypothesis import strategies as st
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from idp.login.assurance import ACR_MFA, ACR_PASSWORD, ACR_PHISHING_RESISTANT, LEVELS, acr_for, meets
from idp.login.throttle import Throttle, account_key
from idp.security.argon2_lanes import verify_argon2id
from idp.security.network import client_ip
from idp.security.passwords import (
    MAX_LENGTH,
    common_passwords,
    hash_password,
    needs_rehash,
    password_problems,
    verify_password,
)
from idp.security.tokens import code_hash, new_code, new_token, same, token_hash
from tests.conftest import TEST_REDIS_URL

STRONG = "violet tractors hum at dawn"
TOO_COMMON = "This password is too common. Choose another."
PERSONAL = "Do not base the password on your name or email address."


# --- passwords (SECURITY.md 20) ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strong_hash() -> str:
    return hash_password(STRONG)


def test_hash_is_argon2id_and_salted(strong_hash):
    assert strong_hash.startswith("$argon2id$")
    assert STRONG not in strong_hash
    assert hash_password(STRONG) != strong_hash  # a fresh salt every time
    assert not needs_rehash(strong_hash)


def test_verify_accepts_the_password_and_nothing_else(strong_hash):
    assert verify_password(strong_hash, STRONG)
    assert not verify_password(strong_hash, STRONG + " ")
    assert not verify_password(strong_hash, STRONG.upper())
    assert not verify_password(strong_hash, "")


def test_no_truncation_the_last_of_100_characters_counts():
    password = "a" * 99 + "b"
    stored = hash_password(password)
    assert verify_password(stored, password)
    assert not verify_password(stored, "a" * 99 + "c")
    assert not verify_password(stored, "a" * 99)


def test_missing_or_malformed_hash_never_matches():
    assert verify_password(None, STRONG) is False
    assert verify_password("", STRONG) is False
    assert verify_password("not-a-hash", STRONG) is False
    assert verify_password("$argon2id$v=19$m=65536,t=3,p=4$broken", STRONG) is False


@pytest.mark.parametrize("params", [
    {},  # idp's own: t=3, m=64 MiB, p=4
    {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
    {"time_cost": 2, "memory_cost": 1024, "parallelism": 3, "salt_len": 8, "hash_len": 16},
    {"time_cost": 1, "memory_cost": 256, "parallelism": 8, "salt_len": 32, "hash_len": 64},
])
@pytest.mark.parametrize("password", ["", STRONG, "caf\u00e9 \u2603 \u00fc" * 3, "nul\x00inside", "x" * MAX_LENGTH])
def test_verification_on_one_thread_agrees_with_argon2_cffi(params, password):
    # idp computes the lanes on VERIFY_THREADS threads; argon2-cffi made the hash on one thread per lane.
    stored = PasswordHasher(**params).hash(password)
    assert verify_password(stored, password) is True
    assert verify_password(stored, password + "x") is False
    assert verify_password(stored[:-2] + ("AA" if stored[-2:] != "AA" else "BB"), password) is False


def test_other_argon2_variants_still_verify_through_argon2_cffi():
    stored = PasswordHasher(type=Type.I, time_cost=1, memory_cost=64, parallelism=2).hash(STRONG)
    assert stored.startswith("$argon2i$")
    assert verify_password(stored, STRONG) is True
    assert verify_password(stored, STRONG + "x") is False


@pytest.mark.parametrize("encoded", [
    "$argon2id$v=19$m=99999999999,t=3,p=4$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=9999999999,t=3,p=4$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=" + "9" * 5000 + ",t=3,p=4$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=65536,t=0,p=4$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=65536,t=3,p=0$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=1,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # m < 8p
    "$argon2id$v=19$m=64,t=1,p=1$AAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "$argon2id$v=19$m=64,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA$extra",
])
def test_out_of_range_or_garbled_argon2id_hashes_never_match(encoded):
    assert verify_password(encoded, STRONG) is False


B64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"


def _respelled(encoded: str, how: str) -> str:
    """The same hash written in a way argon2 never writes it (argon2-cffi refuses each of these)."""
    if how == "leading zeros":
        return encoded.replace("m=64,", "m=0064,")
    if how == "non-ASCII digits":
        return encoded.replace("t=1,", "t=\uff11,")  # a full-width 1, which int() accepts
    # A 32-byte digest is 43 base64 characters with two spare low bits in the last one: setting them
    # decodes to the same bytes.
    head, digest = encoded.rsplit("$", 1)
    assert len(digest) == 43
    return f"{head}${digest[:-1]}{B64[B64.index(digest[-1]) ^ 1]}"


@pytest.mark.parametrize("how", ["leading zeros", "non-ASCII digits", "loose base64"])
def test_a_hash_spelled_as_argon2_never_writes_it_does_not_match(how):
    stored = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(STRONG)
    assert verify_password(stored, STRONG) is True
    respelled = _respelled(stored, how)
    assert respelled != stored
    with pytest.raises((VerificationError, InvalidHashError, UnicodeError)):
        PasswordHasher().verify(respelled, STRONG)  # argon2-cffi refuses it too
    assert verify_password(respelled, STRONG) is False


def test_no_hash_does_not_match_the_internal_placeholder_either():
    # Unknown users are verified against a dummy hash; its password must not open an account without one.
    for missing in (None, ""):
        assert verify_password(missing, "idp-no-such-account-placeholder") is False


def test_unicode_is_normalized_nfkc_before_hashing():
    composed = "caf\u00e9 au lait, s'il vous pla\u00eet"
    decomposed = "cafe\u0301 au lait, s'il vous plai\u0302t"
    assert composed != decomposed
    assert verify_password(hash_password(composed), decomposed)
    fullwidth = "\uff56\uff49\uff4f\uff4c\uff45\uff54 tractors hum at dawn"  # "violet" in full-width letters
    assert verify_password(hash_password(fullwidth), STRONG)


def test_minimum_length_is_8_or_15_when_the_password_is_the_only_factor():
    eight, fourteen, fifteen = "zq7#Lw2!", "zq7#Lw2!mv9$Kp", "zq7#Lw2!mv9$Kpx"
    assert password_problems("zq7#Lw2", single_factor=False) == ["Use at least 8 characters."]
    assert password_problems(eight, single_factor=False) == []
    assert password_problems(eight, single_factor=True) == ["Use at least 15 characters."]
    assert password_problems(fourteen, single_factor=True) == ["Use at least 15 characters."]
    assert password_problems(fifteen, single_factor=True) == []
    assert password_problems("", single_factor=False) == ["Use at least 8 characters."]


def test_long_passwords_are_welcome_up_to_the_cap():
    letters = string.ascii_letters + string.digits
    sixty_four = (letters * 2)[:64]
    assert password_problems(sixty_four, single_factor=True) == []
    assert password_problems((letters * 20)[:MAX_LENGTH], single_factor=True) == []
    assert password_problems((letters * 20)[:MAX_LENGTH + 1], single_factor=True) == [
        f"Use at most {MAX_LENGTH} characters."]


def test_no_composition_rules():
    # All lower-case letters and spaces, no digit or symbol: fine (SP 800-63B 3.1.1.2).
    assert password_problems("purple elephants dance quietly", single_factor=True) == []


def test_shipped_common_password_list_is_loaded_and_lower_cased():
    common = common_passwords()
    assert len(common) > 10_000
    assert {"password", "manchesterunited", "qwerty123456789"} <= common
    assert all(entry == entry.lower() for entry in common)


@pytest.mark.parametrize("password", ["manchesterunited", "ManchesterUnited", "QWERTY123456789", "1q2w3e4r5t6y7u8i"])
def test_common_passwords_are_refused_whatever_their_case(password):
    assert password.lower() in common_passwords()
    assert password_problems(password, single_factor=True) == [TOO_COMMON]


def test_common_password_in_full_width_letters_is_refused():
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "manchesterunited")
    assert password_problems(fullwidth, single_factor=True) == [TOO_COMMON]


def test_short_and_common_gives_both_reasons():
    assert password_problems("password", single_factor=True) == ["Use at least 15 characters.", TOO_COMMON]
    assert password_problems("password", single_factor=False) == [TOO_COMMON]


def test_password_built_on_the_name_or_email_is_refused():
    context = ("alice.smith", "Alice Smith")
    assert password_problems("alice.smith2024!", single_factor=True, context=context) == [PERSONAL]
    assert password_problems("ALICE SMITH 12345", single_factor=True, context=context) == [PERSONAL]
    # The same length without the context words is fine.
    assert password_problems("maple.grove2024!", single_factor=True, context=context) == []


def test_context_word_inside_a_long_password_and_short_words_are_allowed():
    context = ("bob", "Alice")
    # Enough besides the name to be a good password on its own.
    assert password_problems("alice likes violet tractors", single_factor=True, context=context) == []
    # Words shorter than 4 characters are ignored: "bob" is too common a fragment to forbid.
    assert password_problems("bobs violet tractors", single_factor=True, context=context) == []
    assert password_problems("quiet tractors", single_factor=False, context=("", None)) == []


# --- tokens and codes (SECURITY.md 5, 17, 23) --------------------------------------------------------------------

def test_new_token_carries_256_bits_url_safe():
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) >= 43  # 32 bytes in unpadded base64url
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(new_token(16)) >= 22


def test_token_hash_is_sha256_hex_and_does_not_reveal_the_token():
    token = new_token()
    digest = token_hash(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == token_hash(token)
    assert digest != token_hash(new_token())
    assert token not in digest


def test_new_code_is_six_digits_with_leading_zeros_kept():
    codes = [new_code() for _ in range(3000)]
    assert all(re.fullmatch(r"\d{6}", code) for code in codes)
    assert any(code.startswith("0") for code in codes)  # 1 - 0.9**3000: zero-padded, not int-formatted
    assert len(set(codes)) > 2900
    assert re.fullmatch(r"\d{8}", new_code(8))


def test_code_hash_is_keyed_and_bound_to_what_the_code_was_sent_for():
    digest = code_hash("key-one", "123456", "txn-a")
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == code_hash("key-one", "123456", "txn-a")
    assert digest == code_hash("key-one", " 123456 ", "txn-a")  # what the user pasted, trimmed
    assert digest != code_hash("key-one", "123456", "txn-b")
    assert digest != code_hash("key-two", "123456", "txn-a")
    assert digest != code_hash("key-one", "123457", "txn-a")
    # The separator keeps the binding and the code apart: ("txn-a1", "23456") is not ("txn-a", "123456").
    assert digest != code_hash("key-one", "23456", "txn-a1")


def test_same_compares_digests_and_none_never_matches():
    digest = token_hash("x")
    assert same(digest, token_hash("x"))
    assert not same(digest, token_hash("y"))
    assert not same(digest, digest[:-1])
    assert not same(None, digest)
    assert not same(digest, None)
    assert not same(None, None)
    assert not same("", None)


# --- client address (SECURITY.md 21) ---------------------------------------------------------------------------

PROXIES = ["10.0.0.0/8", "192.0.2.10"]


def test_without_trusted_proxies_forwarded_for_is_ignored():
    assert client_ip("203.0.113.5", "198.51.100.7", []) == "203.0.113.5"


def test_untrusted_remote_cannot_choose_its_address():
    assert client_ip("203.0.113.5", "198.51.100.7", PROXIES) == "203.0.113.5"
    assert client_ip("192.0.2.11", "198.51.100.7", PROXIES) == "192.0.2.11"  # a neighbour of the proxy


def test_trusted_proxy_supplies_the_client_address():
    assert client_ip("10.1.2.3", "198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_ip("192.0.2.10", "198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_ip("10.1.2.3", None, PROXIES) == "10.1.2.3"
    assert client_ip("10.1.2.3", "", PROXIES) == "10.1.2.3"


def test_chain_is_walked_right_to_left_through_trusted_hops_only():
    # The client sent a forged first hop; the proxies appended the real address and their own.
    forwarded = "1.1.1.1, 198.51.100.7, 192.0.2.10, 10.9.9.9"
    assert client_ip("10.1.2.3", forwarded, PROXIES) == "198.51.100.7"
    assert client_ip("10.1.2.3", "1.1.1.1,198.51.100.7", PROXIES) == "198.51.100.7"


def test_cidr_entries_cover_their_whole_range():
    assert client_ip("10.255.255.254", "198.51.100.7", ["10.0.0.0/8"]) == "198.51.100.7"
    assert client_ip("11.0.0.1", "198.51.100.7", ["10.0.0.0/8"]) == "11.0.0.1"
    assert client_ip("2001:db8::5", "198.51.100.7", ["2001:db8::/32"]) == "198.51.100.7"
    assert client_ip("10.1.2.3", "2001:DB8:0:0::abc", PROXIES) == "2001:db8::abc"  # canonical form


def test_garbage_hop_falls_back_to_the_proxy_address():
    assert client_ip("10.1.2.3", "not-an-ip", PROXIES) == "10.1.2.3"
    assert client_ip("10.1.2.3", "198.51.100.7, <script>, 10.0.0.2", PROXIES) == "10.1.2.3"
    assert client_ip("10.1.2.3", "198.51.100.7:4711", PROXIES) == "10.1.2.3"
    assert client_ip("10.1.2.3", " , ,", PROXIES) == "10.1.2.3"


def test_only_proxies_in_the_chain_gives_the_leftmost():
    assert client_ip("10.1.2.3", "10.0.0.7, 10.0.0.8", PROXIES) == "10.0.0.7"


# --- assurance (RFC 8176) -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("amr", "acr"), [
    ([], ""),
    (["pwd"], ACR_PASSWORD),
    (["pwd", "otp"], ACR_MFA),  # knowledge + possession is two factors
    (["pwd", "email_otp"], ACR_PASSWORD),  # an emailed code never counts toward MFA (SECURITY.md 24)
    (["pwd", "otp", "mfa"], ACR_MFA),
    (["pwd", "sms", "mfa"], ACR_MFA),
    (["hwk"], ACR_PASSWORD),  # a security key without user verification is one factor
    (["pwd", "hwk"], ACR_MFA),
    (["pwd", "recovery_code"], ACR_MFA),
    (["hwk", "user"], ACR_PHISHING_RESISTANT),
    (["swk", "user", "mfa"], ACR_PHISHING_RESISTANT),
    (["pwd", "user"], ACR_PASSWORD),
])
def test_acr_is_the_strongest_level_the_methods_reach(amr, acr):
    assert acr_for(amr) == acr
    assert acr_for(tuple(reversed(amr))) == acr


def test_levels_are_met_by_themselves_and_stronger_ones_only():
    assert LEVELS == (ACR_PASSWORD, ACR_MFA, ACR_PHISHING_RESISTANT)
    for i, reached in enumerate(LEVELS):
        for j, requested in enumerate(LEVELS):
            assert meets(reached, requested) is (i >= j), (reached, requested)


def test_unknown_or_missing_levels_are_never_met():
    assert not meets(ACR_PHISHING_RESISTANT, "urn:example:unknown")
    assert not meets(ACR_PHISHING_RESISTANT, "")
    assert not meets("", ACR_PASSWORD)
    assert not meets("urn:example:unknown", ACR_PASSWORD)


# --- throttle (SECURITY.md 21) --------------------------------------------------------------------------------

TIERS = {"account": "5/minute;15/hour;40/day", "ip": "20/minute;100/hour"}


def _storages():
    yield pytest.param(lambda: MemoryStorage(), id="memory")
    if TEST_REDIS_URL:
        yield pytest.param(lambda: RedisStorage(TEST_REDIS_URL), id="redis")


@pytest.fixture(params=[MovingWindowRateLimiter, FixedWindowRateLimiter], ids=["moving", "fixed"])
def strategy_class(request):
    return request.param


@pytest.fixture(params=list(_storages()))
def make_throttle(request, strategy_class):
    """A Throttle over real ``limits`` storage, in a key space of its own."""
    storage = request.param()
    prefix = f"idp-unit-{new_token(6)}"

    def factory(tiers=TIERS):
        return Throttle(strategy_class(storage), tiers, prefix=prefix)

    yield factory
    if isinstance(storage, RedisStorage):
        # Only this test's keys: the Redis database is shared with the app tests' rate limits.
        for key in storage.storage.scan_iter(match=f"*{prefix}*"):
            storage.storage.delete(key)
        storage.storage.close()


def _keys(email: str, ip: str = "198.51.100.7") -> dict[str, str]:
    return {"account": account_key(email), "ip": ip}


def test_account_key_ignores_case_and_spaces_and_hides_the_address():
    key = account_key(" Alice@Example.COM ")
    assert key == account_key("alice@example.com")
    assert key != account_key("alicia@example.com")
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert "alice" not in key


def test_delays_grow_from_a_minute_to_an_hour(make_throttle):
    throttle = make_throttle()
    keys = _keys("alice@example.com")
    waits = []
    for _ in range(15):
        waits.append(throttle.retry_after("password", keys))
        throttle.failed("password", keys)
    assert waits[:5] == [0] * 5  # the first attempts are free
    assert all(0 < wait <= 60 for wait in waits[5:])  # the minute tier is full: wait at most a minute
    after_hour_tier = throttle.retry_after("password", keys)
    assert 60 < after_hour_tier <= 3600


def test_unknown_and_known_accounts_are_throttled_alike(make_throttle):
    throttle = make_throttle()
    # Nothing tells the throttle whether an account exists: only the key derived from what was typed.
    sequences = []
    for email in ("alice@example.com", "nobody-here@example.com"):
        keys = _keys(email, ip=f"198.51.100.{len(sequences) + 1}")
        sequence = []
        for _ in range(7):
            sequence.append(throttle.retry_after("password", keys) > 0)
            throttle.failed("password", keys)
        sequences.append(sequence)
    assert sequences[0] == sequences[1] == [False] * 5 + [True] * 2


def test_accounts_kinds_and_addresses_are_counted_apart(make_throttle):
    throttle = make_throttle()
    for _ in range(5):
        throttle.failed("password", _keys("alice@example.com"))
    assert throttle.retry_after("password", _keys("alice@example.com")) > 0
    assert throttle.retry_after("password", _keys("bob@example.com")) == 0
    assert throttle.retry_after("otp", _keys("alice@example.com")) == 0


def test_the_ip_tier_stops_guessing_across_accounts(make_throttle):
    throttle = make_throttle({"account": "5/minute", "ip": "3/minute"})
    for n in range(3):
        throttle.failed("password", _keys(f"user{n}@example.com"))
    assert 0 < throttle.retry_after("password", _keys("fresh@example.com")) <= 60
    assert throttle.retry_after("password", _keys("fresh@example.com", ip="203.0.113.9")) == 0


def test_success_clears_the_account_tier_but_not_the_ip_tier(make_throttle):
    throttle = make_throttle({"account": "3/minute;10/hour", "ip": "3/minute"})
    keys = _keys("alice@example.com")
    for _ in range(3):
        throttle.failed("password", keys)
    assert throttle.retry_after("password", {"account": keys["account"]}) > 0
    throttle.succeeded("password", keys)
    assert throttle.retry_after("password", {"account": keys["account"]}) == 0
    assert throttle.retry_after("password", {"ip": keys["ip"]}) > 0  # other accounts' failures still count
    assert throttle.retry_after("password", keys) > 0


def test_the_apps_throttle_uses_the_configured_storage(app):
    from idp.login.browser import throttle

    with app.test_request_context():
        live = throttle()
        keys = _keys("carol@example.com")
        for _ in range(5):
            live.failed("password", keys)
        assert 0 < live.retry_after("password", keys) <= 60
    with app.test_request_context():  # a later request sees the same counters (Redis when configured)
        assert throttle().retry_after("password", keys) > 0


@settings(max_examples=40, deadline=None, database=None)
@given(password=st.text(max_size=40), other=st.text(max_size=40),
       cost=st.sampled_from([(1, 8, 1), (1, 64, 2), (2, 32, 4), (1, 128, 3)]))
def test_idp_argon2id_verification_agrees_with_argon2_cffi_both_ways(password, other, cost):
    # idp.security.argon2_lanes computes the lanes on one thread; whatever it answers, argon2-cffi answers too.
    time_cost, memory_cost, parallelism = cost
    stored = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism).hash(password)
    for candidate in (password, other):
        try:
            library = PasswordHasher().verify(stored, candidate)
        except VerificationError:
            library = False
        assert verify_argon2id(stored, candidate.encode()) is library


def test_per_ip_limits_count_an_ipv6_client_by_its_64():
    """An attacker holding an IPv6 /64 has 2**64 addresses: per-address limits would be none (review finding)."""
    from idp.security.network import rate_key

    assert rate_key("2001:db8:1:2:aaaa::1") == rate_key("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert rate_key("2001:db8:1:3::1") != rate_key("2001:db8:1:2::1")
    assert rate_key("203.0.113.7") == "203.0.113.7" and rate_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert rate_key("not an address") == "not an address"
