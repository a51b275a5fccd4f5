"""Label-preserving recipes: each validity constraint rejects what breaks it; stock recipes stress, never gate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from robustness_helpers import KEYWORD, keyword_splits, session_resources, train_brittle_model

from audits.context import AuditContext
from audits.registry import run_audit
from secure_ft.records.config import RunConfig
from secure_ft.records.policy import load_policy

TEXT = "I paid the loan on XX/XX/2019 and the bank charged me a late fee again for it"


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    from audits._textattack_offline import import_textattack

    found = session_resources(tmp_path_factory)
    import_textattack(found)
    return found


@pytest.fixture(scope="module")
def encoder(resources):
    from audits.independent_encoder import independent_encoder

    return independent_encoder(resources.root)


def test_an_edited_independent_encoder_is_rebuilt_from_the_wheels_never_used(resources, encoder):
    from audits.independent_encoder import PINNED_SHA256, folder_digest, independent_encoder

    assert encoder.sha256 == PINNED_SHA256 == folder_digest(encoder.path)
    pooling = encoder.path / "1_Pooling" / "config.json"
    original = pooling.read_bytes()
    pooling.write_bytes(original.replace(b"true", b"false", 1))  # e.g. mean pooling switched off
    assert folder_digest(encoder.path) != PINNED_SHA256
    rebuilt = independent_encoder(resources.root)
    assert rebuilt.sha256 == PINNED_SHA256 and pooling.read_bytes() == original


def words_swapped(text, index: int, word: str):
    from textattack.transformations import WordSwapWordNet

    changed = text.replace_word_at_index(index, word)
    changed.attack_attrs["newly_modified_indices"] = {index}
    changed.attack_attrs["last_transformation"] = WordSwapWordNet()  # a word swap, as the recipes make
    return changed


def test_redaction_masks_are_never_modifiable(resources):
    from textattack.shared import AttackedText

    from audits._validity_constraints import RedactionPlaceholders

    text = AttackedText("sent on XX/XX/2019 to XXXX at 303XX please refund")
    allowed = RedactionPlaceholders()._get_modifiable_indices(text)
    assert {text.words[i] for i in allowed} == {"sent", "on", "2019", "to", "at", "please", "refund"}


def test_word_budget_stops_the_third_change_of_a_short_text(resources):
    from textattack.constraints.pre_transformation import MaxModificationRate
    from textattack.shared import AttackedText

    budget = MaxModificationRate(max_rate=0.1, min_threshold=2)  # as the policy's validity defaults build it
    text = AttackedText("one two three four five six seven eight")
    text.attack_attrs["modified_indices"] = {0}
    assert budget._get_modifiable_indices(text)  # one changed: a second is allowed (the floor of 2)
    text.attack_attrs["modified_indices"] = {0, 1}
    assert budget._get_modifiable_indices(text) == set()


def test_penn_treebank_tag_rejects_an_inflection_change(resources):
    from textattack.shared import AttackedText

    from audits._grammaticality import PennTreebankTag

    tag = PennTreebankTag()
    fix = AttackedText("I asked the bank twice. I need them to fix my credit report.")
    assert tag._check_constraint(words_swapped(fix, fix.words.index("fix"), "repair"), fix)  # VB for VB
    assert not tag._check_constraint(words_swapped(fix, fix.words.index("fix"), "fixing"), fix)  # VB → VBG
    days = AttackedText("It took three days to respond to my letter.")
    assert tag._check_constraint(words_swapped(days, 3, "weeks"), days)  # NNS for NNS
    assert not tag._check_constraint(words_swapped(days, 3, "day"), days)  # NNS → NN: "three day"
    make = AttackedText("They make me pay every month.")
    assert not tag._check_constraint(words_swapped(make, 1, "made"), make)  # VBP → VBD
    text = AttackedText(TEXT)
    fee = text.words.index("fee")
    assert tag._check_constraint(words_swapped(text, fee, "charge"), text)  # noun for noun
    assert not tag._check_constraint(words_swapped(text, fee, "quickly"), text)  # noun for adverb
    assert not tag._check_constraint(words_swapped(text, text.words.index("late"), "pay"), text)  # adjective for verb


def test_parse_stability_rejects_a_swap_the_sentence_cannot_take(resources):
    from textattack.shared import AttackedText

    from audits._grammaticality import ParseStability, PennTreebankTag

    stable, tag = ParseStability(), PennTreebankTag()
    make = AttackedText("They make me pay every month.")
    forced = words_swapped(make, 1, "force")  # "They force me pay": same tag (VBP), no longer grammatical
    assert tag._check_constraint(forced, make) and not stable._check_constraint(forced, make)
    assert stable._check_constraint(words_swapped(make, 1, "get"), make)  # "They get me pay": same parse
    way = AttackedText("There is no way to know what they did.")
    telling = words_swapped(way, 3, "telling")  # the relative clause "to know" loses its noun
    assert tag._check_constraint(telling, way) and not stable._check_constraint(telling, way)
    fix = AttackedText("I asked the bank twice. I need them to fix my credit report.")
    i = fix.words.index("fix")  # second sentence: parsed alone, with the first one left out
    assert stable._check_constraint(words_swapped(fix, i, "repair"), fix)
    assert not stable._check_constraint(words_swapped(fix, i, "fixing"), fix)  # "to fixing": a preposition now
    # batched: one call judges many candidates, each on its own parse
    kept = stable.call_many([words_swapped(make, 1, w) for w in ("get", "force", "let")], make)
    assert [t.words[1] for t in kept] == ["get", "let"]


def test_wordnet_swap_must_be_a_synonym_in_the_tagged_part_of_speech(resources):
    from textattack.shared import AttackedText

    from audits._grammaticality import PennTreebankTag, SynonymInTaggedSense

    sense = SynonymInTaggedSense()
    text = AttackedText("They did not receive my request by the required number of days.")
    number = text.words.index("number")  # a noun here; WordNet also lists "numerate" under its verb sense
    assert sense._check_constraint(words_swapped(text, number, "figure"), text)  # a noun sense of "number"
    numerate = words_swapped(text, number, "numerate")
    assert not sense._check_constraint(numerate, text)
    assert PennTreebankTag()._check_constraint(numerate, text)  # the tag check alone lets it through
    pronoun = AttackedText("I paid the fee")
    assert not sense._check_constraint(words_swapped(pronoun, 0, "iodin"), pronoun)  # no synonym of a pronoun


def test_predominant_sense_rejects_a_swap_the_words_do_not_both_default_to(resources):
    from textattack.shared import AttackedText

    from audits._grammaticality import SynonymInTaggedSense
    from audits._word_sense import PredominantSense

    sense, any_sense = PredominantSense(), SynonymInTaggedSense()
    meet = AttackedText("I was not able to meet my obligation this month.")
    i = meet.words.index("meet")  # first verb sense of "meet": come together (run into, encounter)
    fit = words_swapped(meet, i, "fit")  # "fit" shares only a later sense of "meet" (satisfy)
    assert any_sense._check_constraint(fit, meet) and not sense._check_constraint(fit, meet)
    # both default to meet.v.01, but that sense is 49 of meet's 231 SemCor uses: the guess is more likely wrong
    assert not sense._check_constraint(words_swapped(meet, i, "encounter"), meet)
    asked = AttackedText("I requested a loan from the bank.")
    assert not sense._check_constraint(words_swapped(asked, 1, "inquired"), asked)  # request.v.01 is not ask.v.01
    notice = AttackedText("There was no notification of the change.")
    n = notice.words.index("notification")  # first sense: presentment; "telling" shares only its second
    assert not sense._check_constraint(words_swapped(notice, n, "telling"), notice)
    # mutual: "directly" is a lemma of immediately's first synset, but its own first sense is "in a direct manner"
    now = AttackedText("They immediately closed my account.")
    assert not sense._check_constraint(words_swapped(now, 1, "directly"), now)
    assert sense._check_constraint(words_swapped(now, 1, "instantly"), now)  # first sense of both: immediately.r.01
    assert not sense._check_constraint(words_swapped(now, 1, "right_away"), now)  # a multi-word lemma never
    car = AttackedText("The dealer sold me a car I could not afford.")
    c = car.words.index("car")
    assert sense._check_constraint(words_swapped(car, c, "automobile"), car)  # car.n.01 first for both
    assert not sense._check_constraint(words_swapped(car, c, "railcar"), car)  # car's second sense
    pronoun = AttackedText("I paid the fee")
    assert not sense._check_constraint(words_swapped(pronoun, 0, "iodin"), pronoun)  # no synonym of a pronoun
    kept = sense.call_many([words_swapped(car, c, w) for w in ("automobile", "railcar", "auto")], car)
    assert [t.words[c] for t in kept] == ["automobile", "auto"]


def test_the_first_sense_must_be_each_words_majority_sense(resources):
    from textattack.shared import AttackedText

    from audits._word_sense import PredominantSense, first_sense_share

    assert first_sense_share("meet", "v") < 0.5 < first_sense_share("help", "v")  # WordNet's SemCor counts
    assert first_sense_share("previous", "a") == 0.0  # its first-listed synset has no tagged use: no evidence
    sense = PredominantSense()
    text = AttackedText("The agent would not help me with the refund.")
    h = text.words.index("help")
    assert sense._check_constraint(words_swapped(text, h, "assist"), text)  # help.v.01 is the majority for both
    prior = AttackedText("I was leasing my previous home.")
    assert not sense._check_constraint(words_swapped(prior, prior.words.index("previous"), "prior"), prior)


def test_a_swap_replaces_the_lemma_never_the_inflection(resources):
    from textattack.shared import AttackedText

    from audits._word_sense import PredominantSense

    sense = PredominantSense()
    text = AttackedText("I was not able to sell my home and the loan was bought by another bank.")
    sell, bought = text.words.index("sell"), text.words.index("bought")
    assert not sense._check_constraint(words_swapped(text, sell, "sold"), text)  # same lemma, and inflected
    assert sense._check_constraint(words_swapped(text, bought, "purchased"), text)  # another lemma, same inflection
    assert not sense._check_constraint(words_swapped(text, bought, "purchase"), text)  # base form for a past form
    meet = AttackedText("I was unable to meet my obligation.")
    assert not sense._check_constraint(words_swapped(meet, meet.words.index("meet"), "met"), meet)
    began = AttackedText("My score dropped and I started receiving letters from collectors.")
    s = began.words.index("started")  # VBD: "begun" is only the participle (VBN)
    assert not sense._check_constraint(words_swapped(began, s, "begun"), began)
    assert sense._check_constraint(words_swapped(began, s, "began"), began)


def test_an_article_before_the_swap_still_agrees(resources):
    from textattack.shared import AttackedText

    from audits._grammaticality import ArticleAgreement

    agreement = ArticleAgreement()
    text = AttackedText("I called many times in an attempt to pay off a car loan.")
    attempt, car = text.words.index("attempt"), text.words.index("car")
    assert not agreement._check_constraint(words_swapped(text, attempt, "try"), text)  # "an try"
    assert agreement._check_constraint(words_swapped(text, attempt, "effort"), text)
    assert not agreement._check_constraint(words_swapped(text, car, "automobile"), text)  # "a automobile"
    assert agreement._check_constraint(words_swapped(text, car, "vehicle"), text)


def test_stopwords_are_kept_in_any_case(resources):
    from textattack.constraints.pre_transformation import StopwordModification
    from textattack.shared import AttackedText

    from audits._validity_constraints import StopwordsInAnyCase

    text = AttackedText("On the day The bank called")
    stock = {text.words[i] for i in StopwordModification()._get_modifiable_indices(text)}
    kept = {text.words[i] for i in StopwordsInAnyCase()._get_modifiable_indices(text)}
    assert "On" in stock and "The" in stock  # TextAttack's own compares the word as written
    assert kept == {"day", "bank", "called"}


def test_typos_that_land_on_an_english_word_are_rejected(resources):
    from textattack.shared import AttackedText

    from audits._validity_constraints import TyposAreNonWords

    non_words = TyposAreNonWords()
    text = AttackedText("Please fill in the form and send the workers comp claim.")
    form = text.words.index("form")
    assert not non_words._check_constraint(words_swapped(text, form, "from"), text)  # a real-word substitution
    assert non_words._check_constraint(words_swapped(text, form, "fomr"), text)  # a misspelling
    comp = text.words.index("comp")
    assert not non_words._check_constraint(words_swapped(text, comp, "cop"), text)
    assert non_words._check_constraint(words_swapped(text, comp, "cmop"), text)
    assert not non_words._check_constraint(words_swapped(text, form, "Farm"), text)  # case does not hide a word


def test_no_recipe_touches_a_word_with_a_digit(resources, encoder, tiny_model_dir, tmp_path):
    from textattack.shared import AttackedText

    from audits._attack_model import FastClassifierWrapper
    from audits._recipes import build_attack
    from audits._validity_constraints import NumbersKept
    from secure_ft.records.config import RobustnessAuditConfig
    from secure_ft.records.policy import ValidityConstraints
    from secure_ft.text.models import load_trained_model

    text = AttackedText("the loan fee was 850 dollars and 2 payments late my card about 2019 card")
    digits = {i for i, word in enumerate(text.words) if any(c.isdigit() for c in word)}
    assert NumbersKept()._get_modifiable_indices(text) == set(range(len(text.words))) - digits
    model, tokenizer = load_trained_model(tiny_model_dir)
    wrapper = FastClassifierWrapper(model, tokenizer, max_length=16)
    settings = RobustnessAuditConfig.model_validate({"embedding_swap": {"min_word_similarity": -1.0}})

    def touched_digits(recipe: str, validity: ValidityConstraints) -> tuple[int, int]:
        attack = build_attack(recipe, wrapper, settings, tmp_path / "cache", validity=validity,
                              resources_root=resources.root)
        candidates = attack._get_transformations_uncached(text, text)  # transformation + pre-transformation
        touched = sum(1 for c in candidates if c.attack_attrs["newly_modified_indices"] & digits)
        return len(candidates), touched

    for recipe in ("deepwordbug-lp", "pwws-lp", "embedding-swap-lp"):
        generated, touched = touched_digits(recipe, ValidityConstraints())
        assert generated and touched == 0, recipe
    # the same search without the rule edits the numbers: the check above can fail
    assert touched_digits("deepwordbug-lp", ValidityConstraints(numbers_kept=False))[1] > 0


def test_proper_nouns_are_never_swapped(resources):
    from textattack.shared import AttackedText

    from audits._grammaticality import ProperNounsKept

    names = ProperNounsKept()
    text = AttackedText("I requested a loan from SpeedyCash Rapid Cash in the amount of 680 dollars.")
    assert not names._check_constraint(words_swapped(text, text.words.index("Cash"), "Money"), text)  # a lender's name
    assert names._check_constraint(words_swapped(text, text.words.index("amount"), "sum"), text)  # a common noun


def test_independent_sentence_encoder_rejects_a_meaning_change(resources, encoder):
    from textattack.shared import AttackedText

    from audits._validity_constraints import IndependentSentenceEncoder

    text = AttackedText(TEXT)
    floor = IndependentSentenceEncoder(str(encoder.path), encoder.sha256, threshold=0.98, window_size=15)
    late = text.words.index("late")
    assert bool(floor._check_constraint(words_swapped(text, late, "late"), text))  # same words: similarity 1
    assert not bool(floor._check_constraint(words_swapped(text, text.words.index("late"), "early"), text))
    # the default model's own encoder is not the judge
    assert "all-mpnet-base-v2" in floor.model_path and len(encoder.sha256) == 64


def test_character_edits_keep_the_text_edit_distance(resources):
    from textattack.constraints.overlap import LevenshteinEditDistance
    from textattack.shared import AttackedText

    text = AttackedText(TEXT)
    limit = LevenshteinEditDistance(5)
    assert limit._check_constraint(words_swapped(text, 3, "laon"), text)
    assert not limit._check_constraint(AttackedText(TEXT.replace("e", "3")), text)


def test_counting_attack_counts_what_each_constraint_rejected(resources):
    from textattack.shared import AttackedText

    from audits._grammaticality import PennTreebankTag
    from audits._validity_constraints import CountingAttack

    from textattack.constraints.pre_transformation import RepeatModification
    from textattack.transformations import WordSwapWordNet

    attack = CountingAttack.__new__(CountingAttack)  # only the filter: no model, no search
    attack.constraints = [PennTreebankTag()]
    attack.pre_transformation_constraints = [RepeatModification()]
    attack.constraints_cache = {}
    attack.transformation = WordSwapWordNet()
    attack._reset_counts()
    text = AttackedText(TEXT)
    fee = text.words.index("fee")
    kept = attack._filter_transformations_uncached(
        [words_swapped(text, fee, "charge"), words_swapped(text, fee, "quickly")], text, text)
    assert len(kept) == 1
    counts = attack.take_counts()
    assert counts["candidates"] == 2 and counts["rejected_by"] == {"PennTreebankTag": 1}
    assert attack.take_counts()["candidates"] == 0  # taken counts reset


# --- end to end on a brittle model ------------------------------------------------------------


@pytest.fixture(scope="module")
def brittle_model(tmp_path_factory) -> Path:
    return train_brittle_model(tmp_path_factory.mktemp("brittle-lp"))


@pytest.fixture(scope="module")
def regulated_audit(tmp_path_factory, brittle_model, resources):
    """The shipped regulated policy with the default recipes (label-preserving judged, stock as stress)."""
    policy, _ = load_policy()
    config = RunConfig.model_validate({"seed": 7, "model": {"max_length": 16}, "audits": {"robustness": {
        "num_examples": 12, "query_budget": 300, "workers": 1, "resources_dir": str(resources.root),
        "recipes": ["deepwordbug-lp", "pwws-lp"], "stress_recipes": ["deepwordbug", "pwws"],
        "stress_min_correct_examples": 4}}})
    run_dir = tmp_path_factory.mktemp("run-lp")
    context = AuditContext(run_dir=run_dir, model_dir=brittle_model, splits=keyword_splits(), config=config,
                           policy=policy)
    return run_audit("robustness", context), run_dir, policy


@pytest.mark.slow
def test_stock_recipes_run_beside_but_never_gate(regulated_audit):
    result, _, policy = regulated_audit
    assert result.error is None, result.error
    assert set(result.metrics["recipes"]) >= {"deepwordbug-lp", "pwws-lp", "embedding-swap-lp"}  # the policy's
    stress = result.metrics["stress_recipes"]
    assert set(stress) == {"deepwordbug", "pwws"}
    assert all(summary["gated"] is False for summary in stress.values())
    assert stress["deepwordbug"]["attacked"] == 4  # the smaller stress sample
    assert stress["deepwordbug"]["attack_success_rate"]["value"] >= 0.75  # the stock attack still breaks it
    checked = {check.name.split(".")[0] for check in result.checks}
    assert checked == set(policy.robustness.gated_recipes)
    for recipe in policy.robustness.gated_recipes:  # the report prints each threat model in words
        assert result.metrics["recipes"][recipe]["threat_model"]["attacker"]


@pytest.mark.slow
def test_relative_threshold_and_typos_still_break_the_brittle_model(regulated_audit):
    result, _, _ = regulated_audit
    summary = result.metrics["recipes"]["deepwordbug-lp"]
    clean = summary["original_accuracy"]
    relative = summary["relative_accuracy_under_attack"]
    assert relative["ci_lower"] == pytest.approx(summary["accuracy_under_attack"]["ci_lower"] / clean)
    check = next(c for c in result.checks if c.name == "deepwordbug-lp.relative_accuracy_under_attack")
    assert check.threshold == 0.5 and not check.passed  # one misspelt keyword still flips it: a real finding
    counts = summary["constraint_rejections"]
    assert counts["candidates"] > 0 and "LevenshteinEditDistance" in counts["rejected_by"]
    assert {"RepeatModification", "StopwordsInAnyCase", "RedactionPlaceholders", "MaxModificationRate"} <= set(
        counts["positions_excluded_by"])


@pytest.mark.slow
def test_review_sheet_marks_changes_and_is_bound_by_digest(regulated_audit):
    import hashlib

    result, run_dir, _ = regulated_audit
    sheet_path = next(p for p in result.evidence if p.endswith("review_sheet.csv"))
    sheet = pd.read_csv(run_dir / sheet_path)
    assert len(sheet) and set(sheet["recipe"]) <= {"deepwordbug-lp", "pwws-lp", "embedding-swap-lp"}
    assert sheet["perturbed_marked"].str.contains("⟦").all() and sheet["original_marked"].str.contains("⟦").all()
    assert sheet["keeps_meaning"].isna().all()  # for the reviewer to fill in
    digests = result.metrics["evidence_sha256"]
    assert digests[sheet_path] == hashlib.sha256((run_dir / sheet_path).read_bytes()).hexdigest()
    assert KEYWORD not in str(result.metrics["recipes"]["deepwordbug-lp"]["threat_model"])  # no text in metrics


@pytest.mark.slow
def test_report_prints_each_threat_model_and_the_stress_test_without_text(regulated_audit):
    from secure_ft.pipeline.report.html import _robustness

    result, _, policy = regulated_audit
    html = _robustness({"audits": {"robustness": result.to_dict()}})
    for recipe in policy.robustness.gated_recipes:
        assert policy.robustness.threat_models[recipe].family.split(" (")[0] in html
    assert "Stress test (stock recipes, not judged)" in html and "all-mpnet-base-v2" in html
    assert "candidates rejected" in html  # the per-constraint counts
    assert KEYWORD not in html  # test text stays in the evidence files


def test_attack_progress_is_logged_when_no_terminal_shows_the_bars(caplog):
    import logging

    from audits.robustness import _ProgressBars

    bars = _ProgressBars({"pwws-lp": 20})
    with caplog.at_level(logging.INFO, logger="audits.robustness"):
        for _ in range(20):
            bars.update("pwws-lp")  # pytest captures stdout/stderr: no terminal, tqdm disables itself
    bars.close()
    lines = [r.getMessage() for r in caplog.records if "robustness pwws-lp" in r.getMessage()]
    assert len(lines) == 10 and lines[0].startswith("robustness pwws-lp: 2/20 examples")
    assert lines[-1].startswith("robustness pwws-lp: 20/20 examples")
