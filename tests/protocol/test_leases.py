"""Leases (§9): grammar, matching, subsetting, expiry and budgets.

Rules: everything here is synchronous and pure (protocol/ reads no clock); ``now`` is a
fixed datetime. Property tests draw from small alphabets so that patterns and targets
collide often; they compare against naive reference matchers written independently of
the module (``fnmatch`` within one segment, recursion across segments).
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcp_trio.protocol.leases import (
    Budget,
    Lease,
    NameGlob,
    PathGlob,
    UrlGlob,
    check_subset,
    child_lease,
    compile_pattern,
    normalize_path,
    parse_amount,
    parse_lease,
    pattern_covers,
)
from arcp_trio.wire.errors import (
    BudgetExhausted,
    InvalidRequest,
    LeaseExpired,
    LeaseSubsetViolation,
    PermissionDenied,
)

NOW = datetime(2026, 5, 13, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def lease(grants: dict[str, list[str]], expires_at: datetime | None = None) -> Lease:
    return attrs.evolve(parse_lease(grants), expires_at=expires_at)


# -- grammar (§9.2) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "pattern", "why"),
    [
        ("fs.raed", "/x", "unknown lease namespace"),
        ("x-vendor.", "x", "unknown lease namespace"),
        ("fs.read", "", "empty pattern"),
        ("fs.read", "data/**", "absolute"),
        ("fs.read", "/data**", "whole path segment"),
        ("fs.read", "/a/**b", "whole path segment"),
        ("fs.read", "/a/../b", "'..'"),
        ("fs.read", "/a/./b", "'.'"),
        ("fs.read", "/a/[bc", "unclosed"),
        ("fs.read", "/a/[z-a]", "reversed range"),
        ("fs.read", "/a/[/]", "unclosed"),  # split at '/' first
        ("fs.write", "/a\x00", "NUL"),
        ("net.fetch", "example.com/x", "scheme://host"),
        ("net.fetch", "ftp://example.com/", "http or https"),
        ("net.fetch", "https://user@example.com/", "user info"),
        ("net.fetch", "https://api-*.example.com/", "'*' in a host"),
        ("net.fetch", "https://*.1.2.3.4/", "DNS name"),
        ("net.fetch", "https://example.com:0/", "bad port"),
        ("net.fetch", "https://example.com:99999/", "bad port"),
        ("net.fetch", "https://example.com:x/", "bad port"),
        ("net.fetch", "https://exa mple.com/", "spaces"),
        ("net.fetch", "https://example.com/a#frag", "fragment"),
        ("net.fetch", "https://example.com/a%2Fb", "encoded"),
        ("net.fetch", "https://example.com/a%zz", "%XX"),
        ("net.fetch", "https:///x", "bad host"),
        ("net.fetch", "https://[zz::1]/", "bad host"),
        ("net.fetch", "https://example.com/data**", "whole path segment"),
        ("tool.call", "[ab", "unclosed"),
        ("cost.budget", "5$", "amount"),
        ("cost.budget", "USD:-1", "amount"),
    ],
)
def test_bad_patterns_are_invalid_request(namespace: str, pattern: str, why: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_lease({namespace: [pattern]})
    message = str(info.value)
    assert why in message
    if "unknown" not in why and namespace != "cost.budget" and pattern:
        assert namespace in message
        assert repr(pattern) in message


def test_grammar_accepts_every_namespace_and_echoes_verbatim() -> None:
    request = {
        "fs.read": ["/data/**", "/etc/*.conf"],
        "fs.write": ["/tmp/[!.]*"],
        "net.fetch": ["HTTPS://API.Example.com/v1/**", "http://*.example.org:*/"],
        "tool.call": ["search", "tool-*"],
        "agent.delegate": ["helper@1.*"],
        "cost.budget": ["USD:5.00", "credits:1000"],
        "model.use": ["tier-fast/*"],
        "x-vendor.acme.gpu": ["a100-*"],
        "fs.read.extra": [],
    }
    with pytest.raises(InvalidRequest):
        parse_lease(request)  # "fs.read.extra" is not a namespace
    del request["fs.read.extra"]
    assert parse_lease(request).as_wire() == request
    with pytest.raises(InvalidRequest, match="list of patterns"):
        parse_lease({"tool.call": "search"})


def test_compiled_kinds() -> None:
    assert isinstance(compile_pattern("fs.read", "/a"), PathGlob)
    assert isinstance(compile_pattern("net.fetch", "https://a/"), UrlGlob)
    for namespace in ("tool.call", "agent.delegate", "model.use", "x-vendor.a"):
        assert isinstance(compile_pattern(namespace, "a*"), NameGlob)
    assert parse_amount("USD:5.00") == ("USD", Decimal("5.00"))


# -- path globs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [
        ("/data/**", "/data", True),
        ("/data/**", "/data/", True),
        ("/data/**", "/data/a", True),
        ("/data/**", "/data/a/b/c", True),
        ("/data/**", "/database", False),
        ("/data/**", "/data2/x", False),
        ("/data/**", "/", False),
        ("/data/**", "/data/../etc/passwd", False),
        ("/data/**", "/data/./a//b/", True),
        ("/data/**", "data/a", False),
        ("/data/**", "/data/a\x00", False),
        ("/data/**", "/../data/a", False),
        ("/etc/**", "/data/../etc/passwd", True),
        ("/data/*", "/data/a", True),
        ("/data/*", "/data/.env", True),
        ("/data/*", "/data", False),
        ("/data/*", "/data/a/b", False),
        ("/data/*.txt", "/data/a.txt", True),
        ("/data/*.txt", "/data/a/b.txt", False),
        ("/data/?", "/data/a", True),
        ("/data/?", "/data/ab", False),
        ("/data/[ab]", "/data/b", True),
        ("/data/[ab]", "/data/c", False),
        ("/data/[!ab]", "/data/c", True),
        ("/data/[!ab]", "/data/a", False),
        ("/data/[a-c]x", "/data/bx", True),
        ("/data/[]]", "/data/]", True),
        ("/data/[*]", "/data/*", True),
        ("/data/[*]", "/data/a", False),
        ("/data/[+-0]", "/data/0", True),
        ("/data/[+-0]", "/data/.", False),
        ("/data/[+-0]", "/data/x", False),
        ("/a/**/z", "/a/z", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a/**/z", "/a/b/c/zz", False),
        ("/a/**/**/z", "/a/z", True),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/", "/", True),
        ("/", "/a", False),
        ("//data//x/", "/data/x", True),
    ],
)
def test_path_matching(pattern: str, target: str, expected: bool) -> None:
    assert lease({"fs.read": [pattern]}).covers("fs.read", target) is expected
    assert PathGlob.compile(pattern).matches(target) is expected


def test_normalize_path() -> None:
    assert normalize_path("/data//a/./b/../c/") == "/data/a/c"
    assert normalize_path("/") == "/"
    assert normalize_path("/a/..") == "/"
    assert normalize_path("/..") is None
    assert normalize_path("/a/../../b") is None
    assert normalize_path("a/b") is None
    assert normalize_path("") is None
    assert normalize_path("/a\x00") is None


def test_long_targets_do_not_backtrack() -> None:
    glob = PathGlob.compile("/**/" + "*a" * 12 + "*b/**/x")
    assert not glob.matches("/" + "/".join(["a" * 3000] * 20))
    name = NameGlob.compile("*a" * 20 + "*b")
    assert not name.matches("a" * 20_000)


# -- URL globs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [
        ("https://example.com/**", "https://example.com/a/b", True),
        ("https://example.com/**", "https://example.com", True),
        ("https://example.com/**", "HTTPS://EXAMPLE.COM./x", True),
        ("https://example.com/**", "http://example.com/x", False),
        ("https://example.com/**", "https://example.com:443/x", True),
        ("https://example.com:443/**", "https://example.com/x", True),
        ("https://example.com/**", "https://example.com:8443/x", False),
        ("http://example.com:80", "http://example.com/", True),
        ("https://example.com:*/**", "https://example.com:8443/x", True),
        ("https://example.com", "https://example.com/", True),
        ("https://example.com", "https://example.com/x", False),
        ("https://example.com/api/*", "https://example.com/api/x?q=../../admin#f", True),
        ("https://example.com/api/**", "https://example.com/api/../admin", False),
        ("https://example.com/api/**", "https://example.com/api/%2e%2e/admin", False),
        ("https://example.com/api/**", "https://example.com/api/a%2F..%2F..%2Fadmin", False),
        ("https://example.com/api/**", "https://example.com/api/a%5cb", False),
        ("https://example.com/api/**", "https://example.com/api/a%00", False),
        ("https://example.com/api/**", "https://example.com/api/%zz", False),
        ("https://example.com/api/**", "https://example.com/api/%ff", False),
        ("https://example.com/api/**", "https://example.com/api\\..\\admin", False),
        ("https://example.com/api/**", "https://example.com/api/a b", False),
        ("https://example.com/**", "https://example.com@evil.com/", False),
        ("https://example.com/**", "https://user:pw@example.com/", False),
        ("https://example.com/**", "ftp://example.com/", False),
        ("https://example.com/**", "example.com/x", False),
        ("https://example.com/a%20b", "https://example.com/a b", False),
        ("https://example.com/a%20b", "https://example.com/a%20b", True),
        ("https://example.com/a?c", "https://example.com/abc", True),
        ("https://*.example.com/**", "https://a.example.com/x", True),
        ("https://*.example.com/**", "https://a.b.example.com/x", True),
        ("https://*.example.com/**", "https://example.com/x", False),
        ("https://*.example.com/**", "https://evil-example.com/x", False),
        ("https://*.example.com/**", "https://a.example.com.evil.com/x", False),
        ("https://*/**", "https://anything.test/x", True),
        ("https://10.0.0.1/**", "https://10.0.0.1/x", True),
        ("https://10.0.0.1/**", "https://010.0.0.1/x", False),
        ("https://10.0.0.1/**", "https://167772161/x", False),
        ("https://[::1]:8080/**", "https://[0:0::1]:8080/x", True),
        ("https://example.com/**", "https://example.com:0/", False),
        ("https://example.com/**", "https://example.com:/x", True),
    ],
)
def test_url_matching(pattern: str, target: str, expected: bool) -> None:
    assert lease({"net.fetch": [pattern]}).covers("net.fetch", target) is expected


# -- name globs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [
        ("search", "search", True),
        ("search", "Search", False),
        ("search", "searches", False),
        ("tool-*", "tool-", True),
        ("tool-*", "tool-x/y", True),
        ("tool-*", "tool", False),
        ("tier-fast/*", "tier-fast/a/b", True),
        ("tier-fast/*", "tier-slow/a", False),
        ("anthropic/claude-3-*", "anthropic/claude-3-haiku-20240307", True),
        ("anthropic/claude-3-*", "openai/claude-3-x", False),
        ("gpt-?", "gpt-4", True),
        ("gpt-?", "gpt-4o", False),
        ("v[0-9]", "v7", True),
        ("*", "", False),
        ("a**b", "a/x/b", True),
    ],
)
def test_name_matching(pattern: str, target: str, expected: bool) -> None:
    for namespace in ("tool.call", "agent.delegate", "model.use", "x-vendor.acme"):
        assert lease({namespace: [pattern]}).covers(namespace, target) is expected


# -- authorisation (§9.3, §9.5, §9.6, §9.7) --------------------------------------------------


def test_authorize_order_deny_then_expiry_then_budget() -> None:
    granted = lease({"tool.call": ["search"], "cost.budget": ["USD:1"]}, expires_at=LATER)
    budget = Budget.from_lease(granted)
    assert budget is not None
    granted.authorize("tool.call", "search", now=NOW, budget=budget)
    with pytest.raises(PermissionDenied, match=r"tool.call"):
        granted.authorize("tool.call", "other", now=LATER, budget=budget)
    with pytest.raises(PermissionDenied):
        granted.authorize("fs.read", "/x", now=NOW, budget=budget)  # §9.3 deny by default
    with pytest.raises(PermissionDenied):
        granted.authorize("cost.budget", "USD:1", now=NOW, budget=budget)
    with pytest.raises(LeaseExpired):
        granted.authorize("tool.call", "search", now=LATER, budget=budget)  # at expires_at
    budget.charge("USD", Decimal(1))
    with pytest.raises(BudgetExhausted, match="USD"):
        granted.authorize("tool.call", "search", now=NOW, budget=budget)
    with pytest.raises(LeaseExpired):
        granted.authorize("tool.call", "search", now=LATER, budget=budget)


def test_authorize_model() -> None:
    open_ = lease({"tool.call": ["x"]})
    open_.authorize_model("gpt-4o", now=NOW, budget=None, default_allow=True)
    with pytest.raises(PermissionDenied, match=r"no model.use"):
        open_.authorize_model("gpt-4o", now=NOW, budget=None, default_allow=False)
    with pytest.raises(PermissionDenied):
        open_.authorize_model("", now=NOW, budget=None, default_allow=True)
    tiered = lease({"model.use": ["tier-fast/*"]}, expires_at=LATER)
    for default_allow in (True, False):
        tiered.authorize_model("tier-fast/x", now=NOW, budget=None, default_allow=default_allow)
        with pytest.raises(PermissionDenied, match="does not cover"):
            tiered.authorize_model("tier-slow/x", now=NOW, budget=None, default_allow=True)
    with pytest.raises(LeaseExpired):
        tiered.authorize_model("tier-fast/x", now=LATER, budget=None, default_allow=True)
    empty = Budget.from_patterns(["USD:0"])
    with pytest.raises(BudgetExhausted):
        tiered.authorize_model("tier-fast/x", now=NOW, budget=empty, default_allow=True)
    nothing = lease({"model.use": []})
    with pytest.raises(PermissionDenied):
        nothing.authorize_model("m", now=NOW, budget=None, default_allow=True)


def test_evolve_keeps_matchers() -> None:
    granted = attrs.evolve(lease({"fs.read": ["/data/**"]}), expires_at=LATER)
    assert granted.covers("fs.read", "/data/x")
    assert granted.expires_at == LATER
    assert Lease(grants={"tool.call": ["a"]}).covers("tool.call", "a")


# -- budgets (§9.6) --------------------------------------------------------------------------


def test_budget_examples() -> None:
    budget = Budget.from_patterns(["USD:1.00", "USD:0.50", "credits:10"])
    assert budget.initial == {"USD": Decimal("1.50"), "credits": Decimal(10)}
    assert budget.charge("EUR", Decimal(1)) is None
    for _ in range(15):
        budget.charge("USD", Decimal("0.1"))
    assert budget.remaining["USD"] == 0
    assert budget.exhausted() == "USD"
    assert budget.as_strings() == {"USD": "USD:0.00", "credits": "credits:10"}
    assert budget.as_numbers() == {"USD": 0.0, "credits": 10.0}
    with pytest.raises(InvalidRequest):
        budget.charge("credits", Decimal("-1"))
    with pytest.raises(InvalidRequest):
        budget.charge("credits", Decimal("NaN"))
    with pytest.raises(InvalidRequest):
        budget.charge("credits", Decimal("Infinity"))
    assert budget.remaining["credits"] == 10
    tiny = Budget.from_patterns(["USD:0.0000001"])
    assert tiny.as_strings() == {"USD": "USD:0.0000001"}
    assert Budget.from_lease(lease({"tool.call": ["x"]})) is None


def test_budget_reserve_and_release() -> None:
    parent = Budget.from_patterns(["USD:1.00", "credits:5"])
    parent.reserve({"USD": Decimal("0.40"), "EUR": Decimal(9)})
    assert parent.remaining == {"USD": Decimal("0.60"), "credits": Decimal(5)}
    with pytest.raises(InvalidRequest):
        parent.reserve({"USD": Decimal("-1")})
    assert parent.remaining["USD"] == Decimal("0.60")
    parent.release({"USD": Decimal("0.15"), "EUR": Decimal(1)})  # the child spent 0.25
    assert parent.remaining["USD"] == Decimal("0.75")
    parent.release({"USD": Decimal("-0.05")})  # a child that overspent costs its parent
    assert parent.remaining["USD"] == Decimal("0.70")


amounts = st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False, allow_infinity=False)


@given(
    st.dictionaries(st.sampled_from(["USD", "EUR", "credits"]), amounts, min_size=1),
    st.lists(st.tuples(st.sampled_from(["USD", "EUR", "credits", "GBP"]), amounts)),
)
def test_budget_arithmetic_is_exact(
    initial: dict[str, Decimal], charges: list[tuple[str, Decimal]]
) -> None:
    budget = Budget.from_patterns([f"{cur}:{amount:f}" for cur, amount in initial.items()])
    for currency, value in charges:
        left = budget.charge(currency, value)
        assert (left is None) == (currency not in initial)
        with pytest.raises(InvalidRequest):
            budget.charge(currency, -value - Decimal("0.01"))
    for currency, amount in initial.items():
        spent = sum((v for c, v in charges if c == currency), Decimal(0))
        assert budget.remaining[currency] == amount - spent
    assert (budget.exhausted() is not None) == any(v <= 0 for v in budget.remaining.values())
    assert budget.initial == initial


# -- subsetting (§9.4) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "parent", "child", "expected"),
    [
        ("fs.read", "/data/**", "/data/a/**", True),
        ("fs.read", "/data/**", "/data", True),
        ("fs.read", "/data/**", "/data/*.txt", True),
        ("fs.read", "/data/**", "/data/**/x/**", True),
        ("fs.read", "/data/**", "/database", False),
        ("fs.read", "/data/**", "/data*", False),
        ("fs.read", "/data/*", "/data/**", False),
        ("fs.read", "/data/*", "/data/a*b", True),
        ("fs.read", "/data/*", "/data/a/b", False),
        ("fs.read", "/data/[a-z]", "/data/[b-c]", True),
        ("fs.read", "/data/[a-c]", "/data/[b-z]", False),
        ("fs.read", "/data/[!a]", "/data/[bc]", True),
        ("fs.read", "/data/[!a]", "/data/[ab]", False),
        ("fs.read", "/data/[!ab]", "/data/[!abc]", True),
        ("fs.read", "/data/[!abc]", "/data/[!ab]", False),
        ("fs.read", "/data/?", "/data/[!a]", True),
        ("fs.read", "/data/[ab]", "/data/?", False),
        ("fs.read", "/**", "/anything/**", True),
        ("net.fetch", "https://*.example.com/**", "https://a.example.com/x", True),
        ("net.fetch", "https://*.example.com/**", "https://*.a.example.com/**", True),
        ("net.fetch", "https://*.example.com/**", "https://example.com/x", False),
        ("net.fetch", "https://*.example.com/**", "https://*/**", False),
        ("net.fetch", "https://*/**", "https://*.example.com/**", True),
        ("net.fetch", "https://example.com/**", "https://EXAMPLE.com:443/api/**", True),
        ("net.fetch", "https://example.com/**", "https://example.com:*/**", False),
        ("net.fetch", "https://example.com:*/**", "https://example.com:81/**", True),
        ("net.fetch", "https://example.com/**", "http://example.com/**", False),
        ("net.fetch", "https://example.com/api/**", "https://example.com/**", False),
        ("tool.call", "*", "tool-*", True),
        ("tool.call", "tool-*", "tool-a*", True),
        ("tool.call", "tool-*", "*", False),
        ("tool.call", "tool-?", "tool-[ab]", True),
        ("tool.call", "search", "search", True),
        ("tool.call", "search", "search*", False),
        ("model.use", "anthropic/*", "anthropic/claude-3-*", True),
        ("model.use", "anthropic/claude-3-*", "anthropic/*", False),
        ("model.use", "tier-fast/*", "tier-fast/a/b", True),
    ],
)
def test_pattern_covers(namespace: str, parent: str, child: str, expected: bool) -> None:
    assert (
        pattern_covers(compile_pattern(namespace, parent), compile_pattern(namespace, child))
        is expected
    )


def test_check_subset_grants() -> None:
    parent = lease({"fs.read": ["/data/**", "/etc/hosts"], "tool.call": ["search", "tool-*"]})
    check_subset(parent, lease({"fs.read": ["/etc/hosts", "/data/x"], "tool.call": ["tool-a"]}))
    check_subset(parent, lease({}))
    check_subset(parent, parent)
    check_subset(parent, lease({"fs.write": []}))
    with pytest.raises(LeaseSubsetViolation, match=r"fs.read pattern '/database'"):
        check_subset(parent, lease({"fs.read": ["/data/a", "/database"]}))
    with pytest.raises(LeaseSubsetViolation, match=r"no fs.write grant"):
        check_subset(parent, lease({"fs.write": ["/data/x"]}))
    with pytest.raises(LeaseSubsetViolation, match=r"x-vendor.a"):
        check_subset(parent, lease({"x-vendor.a": ["x"]}))
    # Sound but incomplete: a union of parent patterns does not count.
    union = lease({"tool.call": ["a", "b"]})
    with pytest.raises(LeaseSubsetViolation):
        check_subset(union, lease({"tool.call": ["[ab]"]}))


def test_check_subset_models() -> None:
    parent = lease({"model.use": ["tier-fast/*"]})
    check_subset(parent, lease({"model.use": ["tier-fast/small"]}))
    with pytest.raises(LeaseSubsetViolation, match=r"model.use pattern 'tier-slow/x'"):
        check_subset(parent, lease({"model.use": ["tier-slow/x"]}))
    bare = lease({"tool.call": ["x"]})
    check_subset(bare, lease({"model.use": ["m"]}), model_default_allow=True)
    with pytest.raises(LeaseSubsetViolation, match=r"model.use"):
        check_subset(bare, lease({"model.use": ["m"]}), model_default_allow=False)
    # An omitted model.use is inherited, never widened to the deployment default.
    for default_allow in (True, False):
        inherited = child_lease(parent, lease({}), model_default_allow=default_allow)
        assert inherited.grants["model.use"] == ("tier-fast/*",)
        assert not inherited.permits_model("gpt-4o", default_allow=True)
    assert "model.use" not in child_lease(bare, lease({}), model_default_allow=True).grants


def test_check_subset_budget() -> None:
    parent = lease({"cost.budget": ["USD:5.00", "credits:100"]})
    spent = Budget.from_lease(parent)
    assert spent is not None
    spent.charge("USD", Decimal("3.00"))
    # §9.4's example: $5 budget, $3 spent, child may have at most USD:2.00.
    check_subset(parent, lease({"cost.budget": ["USD:2.00"]}), parent_budget=spent)
    check_subset(parent, lease({"cost.budget": ["USD:4.00"]}))  # initial when no live budget
    with pytest.raises(LeaseSubsetViolation, match=r"USD:2.01 exceeds the parent's remaining"):
        check_subset(parent, lease({"cost.budget": ["USD:2.01"]}), parent_budget=spent)
    with pytest.raises(LeaseSubsetViolation, match=r"USD:2.50"):
        check_subset(parent, lease({"cost.budget": ["USD:1.25", "USD:1.25"]}), parent_budget=spent)
    with pytest.raises(LeaseSubsetViolation, match="names EUR"):
        check_subset(parent, lease({"cost.budget": ["EUR:1"]}), parent_budget=spent)
    # A parent without counters is unbounded: any child budget narrows it.
    check_subset(lease({}), lease({"cost.budget": ["EUR:1000"]}))
    check_subset(lease({"cost.budget": []}), lease({"cost.budget": ["EUR:1000"]}))

    child = child_lease(parent, lease({"cost.budget": ["USD:1"]}), parent_budget=spent)
    assert child.grants["cost.budget"] == ("USD:1", "credits:100")
    spent.charge("USD", Decimal("2.50"))
    child = child_lease(parent, lease({}), parent_budget=spent)
    assert child.grants["cost.budget"] == ("USD:0", "credits:100")
    child_budget = Budget.from_lease(child)
    assert child_budget is not None
    assert child_budget.exhausted() == "USD"


def test_check_subset_expiry() -> None:
    parent = lease({"tool.call": ["*"]}, expires_at=LATER)
    sooner = lease({"tool.call": ["a"]}, expires_at=NOW)
    check_subset(parent, sooner)
    assert child_lease(parent, sooner).expires_at == NOW
    assert child_lease(parent, lease({})).expires_at == LATER  # inherited
    same = lease({}, expires_at=LATER)
    assert child_lease(parent, same).expires_at == LATER
    later = lease({}, expires_at=LATER + timedelta(seconds=1))
    with pytest.raises(LeaseSubsetViolation, match="later than the parent"):
        check_subset(parent, later)
    with pytest.raises(LeaseSubsetViolation):
        child_lease(parent, later)
    assert child_lease(lease({}), later).expires_at == later.expires_at
    assert child_lease(lease({}), lease({})).expires_at is None


# -- property tests --------------------------------------------------------------------------

SEGMENT_GLOBS = ["a", "b", "ab", "*", "a*", "*b", "?", "??", "[ab]", "[!a]", "[a-b]*", "**"]
TARGET_SEGMENTS = ["a", "b", "ab", "ba", "aa", "abb", "c"]
NAME_CHARS = ["a", "b", "/", "*", "?", "[ab]", "[!a]"]
HOSTS = ["*", "*.a.com", "*.b.a.com", "a.com", "b.a.com", "c.b.a.com", "b.com"]
TARGET_HOSTS = ["a.com", "b.a.com", "c.b.a.com", "x.c.b.a.com", "b.com", "ab.com"]

path_globs = st.lists(st.sampled_from(SEGMENT_GLOBS), max_size=4).map(lambda s: "/" + "/".join(s))
paths = st.lists(st.sampled_from(TARGET_SEGMENTS), max_size=5).map(lambda s: "/" + "/".join(s))
name_globs = st.lists(st.sampled_from(NAME_CHARS), min_size=1, max_size=5).map("".join)
names = st.text(alphabet="ab/c", min_size=1, max_size=6)
ports = st.sampled_from(["", ":*", ":8080", ":443"])
url_globs = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]),
    st.sampled_from(HOSTS),
    ports,
    path_globs,
)
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https"]),
    st.sampled_from(TARGET_HOSTS),
    st.sampled_from(["", ":8080", ":443", ":80"]),
    paths,
)


def reference_path_match(pattern: list[str], segments: list[str]) -> bool:
    """Naive: ``**`` tries every split; other segments use fnmatch (no '/' inside)."""
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(reference_path_match(rest, segments[k:]) for k in range(len(segments) + 1))
    return (
        bool(segments)
        and fnmatch.fnmatchcase(segments[0], head)
        and reference_path_match(rest, segments[1:])
    )


@given(st.lists(st.sampled_from(SEGMENT_GLOBS), max_size=5), paths)
def test_path_matching_agrees_with_reference(pattern: list[str], target: str) -> None:
    glob = PathGlob.compile("/" + "/".join(pattern))
    segments = [s for s in target.split("/") if s]
    assert glob.matches(target) is reference_path_match(pattern, segments)


raw_paths = st.lists(st.sampled_from([*TARGET_SEGMENTS, ".", "..", ""]), max_size=6).map(
    lambda s: "/" + "/".join(s)
)


@given(path_globs, raw_paths)
def test_matching_sees_the_normalised_path(pattern: str, target: str) -> None:
    glob = PathGlob.compile(pattern)
    normal = normalize_path(target)
    if normal is None:
        assert not glob.matches(target)
        assert ".." in target.split("/")
    else:
        assert glob.matches(target) is glob.matches(normal)
        assert normalize_path(normal) == normal
        assert "//" not in normal
        assert not {".", ".."} & set(normal.split("/"))


@given(st.lists(st.sampled_from(TARGET_SEGMENTS), min_size=1, max_size=3), paths)
def test_globstar_never_matches_siblings(prefix: list[str], tail: str) -> None:
    base = "/" + "/".join(prefix)
    glob = PathGlob.compile(base + "/**")
    assert glob.matches(base)
    assert glob.matches(base + tail)
    for suffix in ("x", "2", ".d", "-", "a"):
        assert not glob.matches(base + suffix)
        assert not glob.matches(base + suffix + tail)
    assert not glob.matches(base + "/../x" + tail)


@given(name_globs, names)
def test_name_matching_agrees_with_fnmatch(pattern: str, target: str) -> None:
    # fnmatchcase lets '*' cross '/', as name globs do.
    assert NameGlob.compile(pattern).matches(target) is fnmatch.fnmatchcase(target, pattern)


@given(path_globs, path_globs, st.lists(paths, min_size=1, max_size=8))
def test_path_cover_is_sound(parent: str, child: str, targets: list[str]) -> None:
    p, c = PathGlob.compile(parent), PathGlob.compile(child)
    assert p.covers(p)
    if p.covers(c):
        for target in targets:
            assert not c.matches(target) or p.matches(target)


@given(name_globs, name_globs, st.lists(names, min_size=1, max_size=8))
def test_name_cover_is_sound(parent: str, child: str, targets: list[str]) -> None:
    p, c = NameGlob.compile(parent), NameGlob.compile(child)
    assert p.covers(p)
    if p.covers(c):
        for target in targets:
            assert not c.matches(target) or p.matches(target)


@given(url_globs, url_globs, st.lists(urls, min_size=1, max_size=8))
def test_url_cover_is_sound(parent: str, child: str, targets: list[str]) -> None:
    p, c = UrlGlob.compile(parent), UrlGlob.compile(child)
    assert p.covers(p)
    if p.covers(c):
        for target in targets:
            assert not c.matches(target) or p.matches(target)


leases = st.fixed_dictionaries(
    {},
    optional={
        "fs.read": st.lists(path_globs, max_size=3),
        "net.fetch": st.lists(url_globs, max_size=2),
        "tool.call": st.lists(name_globs, max_size=3),
        "model.use": st.lists(name_globs, max_size=2),
        "cost.budget": st.lists(
            st.builds(lambda c, a: f"{c}:{a:f}", st.sampled_from(["USD", "EUR"]), amounts),
            max_size=2,
        ),
    },
)
expiries = st.none() | st.integers(0, 3).map(lambda h: NOW + timedelta(hours=h))


@given(
    leases,
    leases,
    expiries,
    expiries,
    st.booleans(),
    st.lists(paths, max_size=4),
    st.lists(urls, max_size=4),
    st.lists(names, max_size=4),
)
def test_subset_lease_never_authorises_what_parent_denies(
    parent_grants: dict[str, list[str]],
    child_grants: dict[str, list[str]],
    parent_expiry: datetime | None,
    child_expiry: datetime | None,
    default_allow: bool,
    path_targets: list[str],
    url_targets: list[str],
    name_targets: list[str],
) -> None:
    parent = lease(parent_grants, parent_expiry)
    child = lease(child_grants, child_expiry)
    try:
        effective = child_lease(parent, child, model_default_allow=default_allow)
    except LeaseSubsetViolation:
        return
    # The effective lease is itself a subset, and deriving again changes nothing.
    check_subset(parent, effective, model_default_allow=default_allow)
    assert child_lease(parent, effective, model_default_allow=default_allow) == effective
    checks = [
        *(("fs.read", t) for t in path_targets),
        *(("net.fetch", t) for t in url_targets),
        *(("tool.call", t) for t in name_targets),
    ]
    for namespace, target in checks:
        assert not effective.covers(namespace, target) or parent.covers(namespace, target)
    for model in name_targets:
        if effective.permits_model(model, default_allow=default_allow):
            assert parent.permits_model(model, default_allow=default_allow)
    if parent.expires_at is not None:
        assert effective.expires_at is not None
        assert effective.expires_at <= parent.expires_at
    parent_budget = Budget.from_lease(parent)
    child_budget = Budget.from_lease(effective)
    if parent_budget is not None and parent_budget.initial:
        assert child_budget is not None
        assert child_budget.initial.keys() == parent_budget.initial.keys()
        for currency, amount in child_budget.initial.items():
            assert amount <= parent_budget.initial[currency]
