"""The template's own tests: each block run the way the kernel would
(``foundry.kernel.testing.run_block``), the tool and the assertion called directly.

Run them with ``python -m pytest`` in this folder (pytest-trio, ``trio_mode = true``)."""

import json

import foundry_plugin_template as plugin
import pytest
from foundry.kernel import Emission, Throttle
from foundry.kernel.core.evals import RunFacts, StepFacts
from foundry.kernel.testing import run_block
from foundry_plugin_template import MinWords, SaveTally, slugify, tally_words


async def test_tally_words_counts_and_emits(tmp_path):
    run = await run_block(tally_words, {"text": "the quick brown fox"}, artifact_dir=tmp_path)

    assert run.state == "completed"
    assert run.output == {"words": 4, "longest": "quick"}
    assert run.delivered == [Emission("words_tallied", {"words": 4, "longest": "quick"})]


def test_tally_words_lets_payloads_without_text_pass_by():
    assert tally_words.accepts({"text": "x"})
    assert not tally_words.accepts({"text": 7})


async def test_save_tally_writes_its_artifact_under_full(tmp_path):
    run = await run_block(SaveTally(), {"words": 4}, artifact_dir=tmp_path)

    saved = tmp_path / "tally.json"
    assert run.state == "completed"
    assert json.loads(saved.read_text()) == {"words": 4}
    assert run.outcome.artifacts == (str(saved),)
    assert run.delivered == [Emission("tally_saved", {"path": str(saved)})]


async def test_save_tally_only_audits_under_audit_only(tmp_path):
    run = await run_block(
        SaveTally(), {"words": 4}, artifact_dir=tmp_path, throttle=Throttle.AUDIT_ONLY
    )

    assert not (tmp_path / "tally.json").exists()
    assert run.delivered == []
    assert run.withheld == [Emission("tally_saved", {"path": None})]
    assert run.outcome.summary == "would save 4 words"


async def test_save_tally_is_skipped_but_simulates_under_dry_run(tmp_path):
    run = await run_block(
        SaveTally(), {"words": 4}, artifact_dir=tmp_path, throttle=Throttle.DRY_RUN
    )

    assert run.state == "skipped"
    assert not (tmp_path / "tally.json").exists()
    assert run.delivered == [Emission("tally_saved", {"path": None, "simulated": True})]


def test_slugify_tool():
    [tool] = plugin.register_tools()

    assert tool.name == "slugify"
    assert tool.fn({"text": "Héllo, World!"}) == {"slug": "hello-world"}


def test_slugify_refuses_a_text_that_is_not_a_string():
    with pytest.raises(ValueError, match="args.text"):
        slugify({"text": 3})


def test_min_words_assertion():
    facts = RunFacts("run_1", "succeeded", (StepFacts("tally", "succeeded", {"words": 4}),))
    check = plugin.register_eval_assertions()["min_words"]

    assert isinstance(check, MinWords)
    assert check.check(3, facts, "tally").passed
    assert not check.check(5, facts, "tally").passed
    assert check.check("five", facts, "tally").error


def test_the_hooks_return_the_blocks_in_running_order():
    assert [b.name for b in plugin.register_blocks()] == ["Tally Words", "Save Tally"]
