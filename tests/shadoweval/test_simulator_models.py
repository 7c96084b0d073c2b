"""Simulated model behaviour and scenarios, in-process over the whole task.

Every statistical check compares with the configuration within 4 binomial (or normal)
sigma; the draws are seeded, so a failure is a real change, never noise.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta

from proxy.errors import ConfigError
from shadoweval.simulator.models import MAX_CONFIDENCE, SimModel, count_tokens, guess_queue, spread
from shadoweval.simulator.scenario import CHANCE, PROFILES, Scenario, load_scenario, parse_scenario
from shadoweval.simulator.task import QUEUES, SYSTEM_PROMPT, Task, load_task
from tests.shadoweval.simfix import default_data, one_model

ROOT = Path(__file__).resolve().parents[2]


def _models(scenario: Scenario) -> tuple[Task, dict[str, SimModel]]:
    task = load_task(scenario.task.seed, scenario.task.size)
    return task, {m.name: SimModel(m, scenario, task) for m in scenario.models}


def _outcomes(model: SimModel, task: Task) -> tuple[np.ndarray, np.ndarray]:
    answers = [model.answer(t.messages()) for t in task.tickets]
    return (
        np.array([a.correct for a in answers], dtype=float),
        np.array([a.confidence for a in answers]),
    )


# --- scenarios ------------------------------------------------------------------------------


def test_default_scenario_and_its_commented_copy_agree() -> None:
    default = load_scenario()
    assert load_scenario(ROOT / "configs/simulator.yaml") == default
    assert [m.name for m in default.by_role("production")] == ["prod"]
    assert {m.name for m in default.by_role("candidate")} == {"big", "small"}
    assert [m.name for m in default.by_role("replay")] == ["tuned"]
    assert default.slo_p95_ms == 1500


def test_like_copies_behaviour_but_not_identity() -> None:
    default = load_scenario()
    prod, replica = default.model("prod"), default.model("prod-replica")
    assert replica.role == "replica" and replica.seed == 1 and replica.behaviour == "prod"
    assert replica.accuracy == prod.accuracy and replica.latency == prod.latency
    assert (
        replica.subset_accuracy == prod.subset_accuracy and replica.calibration == prod.calibration
    )
    assert replica.description != prod.description
    data = default_data()
    data["models"].append(
        {"name": "prod-fast", "like": "prod-replica", "latency": {"ttft_ms": {"median": 50}}}
    )
    fast = parse_scenario(data).model("prod-fast")
    assert fast.behaviour == "prod" and fast.seed == 0
    assert (
        fast.latency.ttft_ms.median == 50
        and fast.latency.ttft_ms.sigma == prod.latency.ttft_ms.sigma
    )


def test_calibration_profiles() -> None:
    for name, (temperature, bias) in PROFILES.items():
        cal = one_model(calibration=name).models[0].calibration
        assert (cal.profile, cal.temperature, cal.bias) == (name, temperature, bias)
    cal = one_model(calibration={"temperature": 3.0}).models[0].calibration
    assert (cal.profile, cal.temperature, cal.bias) == ("custom", 3.0, 0.0)
    cal = one_model(calibration={"profile": "overconfident", "bias": 2.0}).models[0].calibration
    assert (cal.temperature, cal.bias) == (2.0, 2.0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"accuracy": 1.5}, "models.0.accuracy"),
        ({"accuracy": 0.1}, "models.0.accuracy"),
        ({"subset_accuracy": {"lang:de": 0.05}}, "subset_accuracy.lang:de"),
        ({"error_rate": 0.7, "timeout_rate": 0.5}, "error_rate + timeout_rate"),
        ({"error_statuses": {200: 1}}, "error_statuses.200"),
        ({"calibration": "wild"}, "models.0.calibration.profile"),
        ({"latency": {"ttft_ms": {"median": -1}}}, "models.0.latency.ttft_ms.median"),
        ({"colour": "blue"}, "models.0.colour"),
        ({"like": "ghost"}, "'ghost' is no such model"),
    ],
)
def test_bad_scenarios_name_the_field(change: dict[str, object], field: str) -> None:
    data = {"models": [{"name": "m", "accuracy": 0.8, **change}]}
    with pytest.raises(ConfigError, match=field.replace("+", r"\+").replace(".", r"\.")):
        parse_scenario(data)


def test_bad_scenarios_as_a_whole(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate model name"):
        parse_scenario({"models": [{"name": "m", "accuracy": 0.8}, {"name": "m", "accuracy": 0.7}]})
    two = [{"name": n, "accuracy": 0.8, "role": "production"} for n in ("a", "b")]
    with pytest.raises(ConfigError, match="at most one model"):
        parse_scenario({"models": two})
    cycle = [{"name": "a", "like": "b"}, {"name": "b", "like": "a"}]
    with pytest.raises(ConfigError, match="cycle"):
        parse_scenario({"models": cycle})
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_scenario(tmp_path / "list.yaml")


# --- accuracy -------------------------------------------------------------------------------


def _within(right: np.ndarray, p: np.ndarray) -> tuple[bool, str]:
    sd = math.sqrt(float(np.sum(p * (1 - p))))
    ok = abs(float(right.sum() - p.sum())) < 4 * sd
    return ok, f"{right.sum():.0f} right vs {p.sum():.1f} expected (sd {sd:.1f})"


def test_accuracy_per_subset_matches_configuration() -> None:
    task, models = _models(load_scenario())
    for name, model in models.items():
        right, _ = _outcomes(model, task)
        p = np.array([model.ticket_p_correct(t) for t in task.tickets])
        ok, why = _within(right, p)
        assert ok, (name, "overall", why)
        configured = model.spec.subset_accuracy
        plain = np.array([not set(t.tags) & set(configured) for t in task.tickets])
        assert np.allclose(p[plain], model.spec.accuracy)
        ok, why = _within(right[plain], p[plain])
        assert ok, (name, "untagged", why)
        for tag, acc in configured.items():
            only = np.array([set(t.tags) & set(configured) == {tag} for t in task.tickets])
            assert np.allclose(p[only], acc)
            ok, why = _within(right[only], p[only])
            assert ok, (name, tag, why)


def test_tag_shifts_combine_on_the_logit_scale() -> None:
    model = _models(
        one_model(accuracy=0.8, subset_accuracy={"lang:de": 0.6, "channel:phone": 0.9})
    )[1]["m"]
    assert math.isclose(model.p_correct(("lang:de",)), 0.6)
    both = model.p_correct(("lang:de", "channel:phone", "length:long"))
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert math.isclose(logit(both), logit(0.6) + logit(0.9) - logit(0.8))


# --- calibration ----------------------------------------------------------------------------


def _bins(
    model: SimModel, right: np.ndarray, conf: np.ndarray, bins: int = 10
) -> list[tuple[float, float, float, float]]:
    """Per equal-mass bin of reported confidence: (accuracy, expected, sd, mean confidence)."""
    keep = (conf > CHANCE) & (conf < MAX_CONFIDENCE)
    assert keep.mean() > 0.98  # clamped confidences are rare
    right, conf = right[keep], conf[keep]
    out = []
    for idx in np.array_split(np.argsort(conf, kind="stable"), bins):
        belief = np.array([model.belief_of(c) for c in conf[idx]])
        sd = math.sqrt(float(np.sum(belief * (1 - belief)))) / len(idx)
        out.append((float(right[idx].mean()), float(belief.mean()), sd, float(conf[idx].mean())))
    return out


@pytest.mark.parametrize("name", ["small", "big", "prod", "tuned"])
def test_confidence_relates_to_being_right_as_configured(name: str) -> None:
    task, models = _models(load_scenario())
    model = models[name]
    right, conf = _outcomes(model, task)
    for accuracy, expected, sd, _ in _bins(model, right, conf):
        assert abs(accuracy - expected) < 4 * sd + 1e-9, (name, accuracy, expected, sd)


def test_profiles_differ_where_they_should() -> None:
    """Calibrated: confidence ~ accuracy. Overconfident: above it. Underconfident: below it."""
    over = _models(load_scenario())[1]["big"]
    under_scenario = one_model(
        accuracy=0.85, calibration={"profile": "underconfident", "resolution": 2.0}
    )
    under_scenario = under_scenario.model_copy(update={"task": load_scenario().task})
    task, under = _models(under_scenario)
    calibrated = _models(load_scenario())[1]["small"]
    for model, sign in ((calibrated, 0), (over, 1), (under["m"], -1)):
        right, conf = _outcomes(model, task)
        gap = float(conf.mean() - right.mean())
        sd = math.sqrt(right.mean() * (1 - right.mean()) / len(right))
        if sign == 0:
            assert abs(gap) < 4 * sd, gap
        else:
            assert sign * gap > 4 * sd, (model.name, gap)
    # Overconfident 'big' says more than 0.99 on nearly everything, right about 93% of the time.
    right, conf = _outcomes(over, task)
    assert np.mean(conf > 0.99) > 0.95 and right.mean() < 0.95


def test_resolution_zero_means_confidence_says_nothing() -> None:
    task, models = _models(one_model(accuracy=0.8, calibration={"resolution": 0.0}))
    _, conf = _outcomes(models["m"], task)
    assert np.allclose(conf, conf[0]) and math.isclose(float(conf[0]), 0.8, rel_tol=1e-9)


def test_top_logprobs_are_a_distribution_over_queues_led_by_the_answer() -> None:
    task, models = _models(load_scenario())
    for model in models.values():
        for t in task.tickets[:300]:
            a = model.answer(t.messages())
            probs = [p for _, p in a.top]
            assert a.top[0][0] == a.queue == a.text and sorted(q for q, _ in a.top) == sorted(
                QUEUES
            )
            assert math.isclose(sum(probs), 1.0) and max(probs[1:]) <= probs[0] + 1e-12
            if not a.correct:  # when wrong, the truth is the runner-up
                assert a.top[1][0] == t.queue


# --- determinism and shared difficulty -------------------------------------------------------


def test_same_model_content_and_seed_same_answer() -> None:
    scenario = load_scenario()
    task, first = _models(scenario)
    _, second = _models(scenario)
    _, reseeded = _models(scenario.model_copy(update={"seed": 1}))
    for name in first:
        a = [first[name].answer(t.messages()) for t in task.tickets[:500]]
        assert a == [second[name].answer(t.messages()) for t in task.tickets[:500]]
        b = [reseeded[name].answer(t.messages()) for t in task.tickets[:500]]
        assert sum(x.text != y.text for x, y in zip(a, b, strict=True)) > 15


def test_replica_differs_from_production_only_by_its_nondeterminism() -> None:
    scenario = load_scenario()
    task, models = _models(scenario)
    prod = [models["prod"].answer(t.messages()).text for t in task.tickets]
    replica = [models["prod-replica"].answer(t.messages()).text for t in task.tickets]
    agree = np.mean([a == b for a, b in zip(prod, replica, strict=True)])
    nd = scenario.model("prod").nondeterminism
    redrawn = 1 - (1 - nd) ** 2  # either deployment drew afresh
    assert 1 - redrawn < agree < 1 - redrawn / 20, agree
    steady = scenario.model_copy(
        update={"models": [m.model_copy(update={"nondeterminism": 0.0}) for m in scenario.models]}
    )
    _, steady_models = _models(steady)
    assert all(
        steady_models["prod"].answer(t.messages())
        == steady_models["prod-replica"].answer(t.messages())
        for t in task.tickets[:300]
    )


def test_shared_difficulty_makes_models_err_on_the_same_tickets() -> None:
    def error_correlation(shared: float) -> float:
        data = default_data(shared_difficulty=shared)
        task, models = _models(parse_scenario(data))
        a, _ = _outcomes(models["small"], task)
        b, _ = _outcomes(models["tuned"], task)
        return float(np.corrcoef(a, b)[0, 1])

    independent, shared = error_correlation(0.0), error_correlation(0.9)
    assert abs(independent) < 4 / math.sqrt(3000)  # sd of a null correlation is 1/sqrt(n)
    assert shared > independent + 8 / math.sqrt(3000)


# --- calls: latency, errors, timeouts ------------------------------------------------------


def test_call_plans_follow_the_latency_and_failure_model() -> None:
    scenario = one_model(
        latency={
            "ttft_ms": {"median": 400, "sigma": 0.5},
            "tokens_per_s": {"median": 50, "sigma": 0.2},
        },
        error_rate=0.05,
        timeout_rate=0.02,
        error_statuses={500: 3, 429: 1},
    ).model_copy(update={"time_scale": 0.5})
    model = _models(scenario)[1]["m"]
    n = 20_000
    plans = [model.plan_call() for _ in range(n)]
    ttft = np.log([p.ttft_s * 1000 / 0.5 for p in plans])
    below = float(np.mean(ttft < math.log(400)))
    assert abs(below - 0.5) < 4 * math.sqrt(0.25 / n)
    assert abs(float(np.std(ttft)) - 0.5) < 4 * 0.5 / math.sqrt(2 * n)
    tps = np.log([0.5 / p.token_s for p in plans])
    assert abs(statistics.median(tps) - math.log(50)) < 4 * 1.2533 * 0.2 / math.sqrt(n)
    fates: list[str] = [p.fate for p in plans]
    for fate, rate in (("error", 0.05), ("timeout", 0.02)):
        assert abs(fates.count(fate) - n * rate) < 4 * math.sqrt(n * rate * (1 - rate))
    errors = [p.status for p in plans if p.fate == "error"]
    assert abs(errors.count(429) - len(errors) / 4) < 4 * math.sqrt(len(errors) * 3 / 16)
    assert set(errors) == {500, 429}


# --- prompts the task does not know --------------------------------------------------------


def test_unknown_prompts_get_plausible_answers() -> None:
    model = _models(load_scenario())[1]["prod"]
    routing = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "My package never arrived and the tracking has not moved."},
    ]
    a = model.answer(routing)
    assert a.queue in QUEUES and a.correct is None and a.text == a.queue
    assert guess_queue("My package never arrived and the tracking has not moved.") == "shipping"
    assert guess_queue("Ich glaube, mein Konto wurde gehackt") == "security"
    assert guess_queue("something else entirely") == "technical"
    chat = model.answer([{"role": "user", "content": "Write me a haiku."}])
    assert chat.queue is None and len(chat.tokens) > 5 and chat.text == "".join(chat.tokens)
    assert model.answer([{"role": "user", "content": "Write me a haiku."}]) == chat


def test_spread_keeps_mass_under_the_cap() -> None:
    for mass, n, cap in (
        (0.5, 5, 0.5),
        (5 / 6, 5, 1 / 6),
        (0.3, 5, 0.7),
        (0.001, 3, 0.999),
        (0.8, 4, 0.25),
    ):
        parts = spread(mass, n, cap)
        assert math.isclose(sum(parts), mass) and max(parts) <= cap + 1e-12
        assert parts == sorted(parts, reverse=True)


def test_prompt_tokens_grow_with_the_prompt() -> None:
    t = load_task().tickets[0]
    assert count_tokens(t.messages()) > count_tokens(t.messages()[:1]) > 100


# --- the default scenario's story -------------------------------------------------------------


def _ece(right: np.ndarray, conf: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-mass bins."""
    parts = np.array_split(np.argsort(conf, kind="stable"), bins)
    return float(sum(len(i) * abs(conf[i].mean() - right[i].mean()) for i in parts) / len(conf))


def _threshold_coverage(right: np.ndarray, conf: np.ndarray, target: float = 0.95) -> float:
    """Largest share of items above a confidence threshold whose precision has a one-sided
    95% Clopper-Pearson lower bound of at least `target` (0 if no threshold does)."""
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(right[order])
    n = np.arange(1, len(conf) + 1)
    lower = np.where(hits > 0, beta.ppf(0.05, hits, n - hits + 1), 0.0)
    ok = np.flatnonzero(lower >= target)
    return float((ok.max() + 1) / len(conf)) if ok.size else 0.0


def test_default_scenario_tells_the_story() -> None:
    """'big' is more accurate than production but overconfident, slow and dear; 'small' is a
    little less accurate, calibrated and cheap; production sits between them. On 300 labels a
    confidence threshold can promise 95% precision for 'small' and not for 'big'."""
    scenario = load_scenario()
    task, models = _models(scenario)
    out = {name: _outcomes(models[name], task) for name in ("prod", "big", "small")}
    acc = {name: float(r.mean()) for name, (r, _) in out.items()}
    ece = {name: _ece(r, c) for name, (r, c) in out.items()}
    assert acc["big"] - 0.04 > acc["prod"] > acc["small"] > acc["prod"] - 0.07, acc
    assert ece["big"] > 0.05 > ece["prod"] > ece["small"], ece
    p95 = {
        name: m.latency.ttft_ms.median * math.exp(1.645 * m.latency.ttft_ms.sigma)
        for name, m in ((n, scenario.model(n)) for n in out)
    }
    assert scenario.slo_p95_ms is not None
    assert p95["big"] > scenario.slo_p95_ms > p95["prod"] > p95["small"], p95
    price = {name: scenario.model(name).price.input_per_mtok for name in out}
    assert price["big"] > price["prod"] > price["small"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.choice(len(task), 300, replace=False)
        assert _threshold_coverage(*(a[idx] for a in out["small"])) > 0.3
        assert _threshold_coverage(*(a[idx] for a in out["big"])) < 0.05
