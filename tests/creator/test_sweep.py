"""Many jobs at once (``lilypad run --sweep`` and ``--inputs-file``): the forms a sweep takes and
refuses, how jobs are expanded, and the jobs themselves against the real chain, solver, IPFS
node and providers of ``tests/creator/conftest.py``.

``lilypad run`` gains the options in ``lilypad/cli/run.py``; until then a command here declares
them as ``run`` will and calls :func:`lilypad.cli.sweep.run_sweep`, through the CLI's real entry
point (its error handler and exit codes)."""

from __future__ import annotations

import _thread
import json
from pathlib import Path
from typing import Any

import pytest

from lilypad.chain.crypto import keccak
from lilypad.chain.light import LightChain
from lilypad.cli.sweep import (
    Board,
    Outcome,
    combinations,
    load_inputs_file,
    parse_sweep,
    run_many,
)
from lilypad.creator import JobState, Step, load_records
from lilypad.errors import InputError
from lilypad.solver_api import SolverClient
from tests.conftest import CliResult, CliRunner
from tests.creator.conftest import Creator, cowsay
from tests.provider.conftest import World


@pytest.fixture
def sweep_cli(cli: CliRunner) -> CliRunner:
    """``lilypad`` itself: ``run --sweep/--inputs-file`` and ``jobs``."""
    return cli


@pytest.fixture
def profile(creator: Creator, monkeypatch: pytest.MonkeyPatch) -> None:
    creator.world.profile()
    monkeypatch.setenv("WEB3_PRIVATE_KEY", creator.account.key.hex())


RUN = ("run", "cowsay:v0.0.4", "--network", "test", "--yes", "--verify", "never")


def _said(result: CliResult) -> str:
    return " ".join(result.stderr.split())


# ------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("Seed=1..4", ("1", "2", "3", "4")),
        ("Seed=0..8..4", ("0", "4", "8")),
        ("Seed=-1..1", ("-1", "0", "1")),
        ("Seed=7", ("7",)),
        ("Strength=0.5..1.0..0.25", ("0.5", "0.75", "1.0")),
        ("Strength=0.1..0.3..0.1", ("0.1", "0.2", "0.3")),  # exact: no 0.30000000000000004
        ("Scale=1..2..0.5", ("1.0", "1.5", "2.0")),
        ("Prompt=a cat, a dog", ("a cat", "a dog")),
        (r"Prompt=red\, green,blue", ("red, green", "blue")),
        (r"Prompt=back\\,slash", ("back\\", "slash")),
        ("Prompt=wait... what?", ("wait... what?",)),
    ],
)
def test_a_sweep_gives_its_values_in_order(text: str, values: tuple[str, ...]) -> None:
    assert parse_sweep(text) == (text.partition("=")[0], values)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Seed", "no NAME= before the values"),
        ("=1,2", "no NAME= before the values"),
        ("9lives=1,2", "'9lives' is no name"),
        ("Seed=", "value 1 is empty"),
        ("Seed=1,,2", "value 2 is empty"),
        ("Seed=1,2,", "value 3 is empty"),
        ("Seed=1,1", "'1' is given twice"),
        ("Seed=8..1", "the range runs backwards; write 1..8"),
        ("Seed=1..8..0", "the step 0 is not above 0"),
        ("Seed=1..8..3", "end at 7 and miss 8"),
        ("Seed=1...8", "'1...8' is not a range"),
        ("Seed=1..", "'1..' is not a range"),
        ("Strength=0.5..1", "a range of decimals needs a step"),
        ("Strength=0.5..1.0..0.3", "end at 0.8 and miss 1.0"),
    ],
)
def test_every_bad_sweep_is_refused_naming_it_and_the_forms(text: str, says: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_sweep(text)
    assert caught.value.exit_code == 2
    assert f"--sweep {text!r}" in caught.value.message
    assert says in caught.value.message
    assert "NAME=a,b,c" in caught.value.message
    assert "NAME=1..8" in caught.value.message


def test_a_range_over_the_job_limit_is_refused_before_it_is_built() -> None:
    with pytest.raises(InputError, match="gives 1000000000 values; at most 64 jobs"):
        parse_sweep("Seed=1..1000000000")
    assert len(parse_sweep("Seed=1..100", limit=100)[1]) == 100


# ----------------------------------------------------------------------------- expansion
def test_the_cross_product_is_in_a_stable_order_the_last_sweep_fastest() -> None:
    jobs = combinations(["Prompt=a cat", "Seed=0"], [("Seed", ("1", "2")), ("Steps", ("20", "30"))])
    assert jobs == [  # the sweep replaces Seed=0 given with -i
        ["Prompt=a cat", "Seed=1", "Steps=20"],
        ["Prompt=a cat", "Seed=1", "Steps=30"],
        ["Prompt=a cat", "Seed=2", "Steps=20"],
        ["Prompt=a cat", "Seed=2", "Steps=30"],
    ]


def test_inputs_file_jobs_are_crossed_with_the_sweeps_file_first() -> None:
    jobs = combinations(["Prompt=x"], [("Seed", ("1", "2"))], [["Prompt=a"], ["Prompt=b"]])
    assert jobs == [
        ["Prompt=a", "Seed=1"],
        ["Prompt=a", "Seed=2"],
        ["Prompt=b", "Seed=1"],
        ["Prompt=b", "Seed=2"],
    ]


@pytest.mark.parametrize(
    ("sweeps", "file_jobs", "says"),
    [
        ([("Seed", ("1",)), ("Seed", ("2",))], None, "--sweep Seed is given twice"),
        ([("Seed", ("1", "2"))], [["Seed=3"]], "Seed is both swept and given in the inputs file"),
        ([("Seed", tuple(map(str, range(9)))), ("Steps", tuple(map(str, range(8))))], None,
         "these inputs make 72 jobs; at most 64"),
        ([], [["Seed=1"], ["Seed=1"]], "jobs 1 and 2 have the same inputs (Seed=1)"),
    ],
)  # fmt: skip
def test_expansion_refuses_what_cannot_be_meant(
    sweeps: list[tuple[str, tuple[str, ...]]], file_jobs: list[list[str]] | None, says: str
) -> None:
    with pytest.raises(InputError) as caught:
        combinations([], sweeps, file_jobs)
    assert says in str(caught.value)
    assert caught.value.exit_code == 2


def test_max_jobs_allows_more() -> None:
    sweep = [("Seed", tuple(map(str, range(100))))]
    assert len(combinations([], sweep, max_jobs=100)) == 100


# ---------------------------------------------------------------------------- inputs file
def test_an_inputs_file_turns_json_values_into_inputs(tmp_path: Path) -> None:
    path = tmp_path / "in" / "inputs.json"
    path.parent.mkdir()
    path.write_text(
        '[{"Prompt": "a \\"cat\\"", "Seed": 12345678901234567890, "Strength": 0.1,'
        ' "Big": 1e400, "Refine": true, "Image": "@cat.png", "Abs": "@/x/y.png"},'
        ' {"Refine": false, "Home": "@~/z.png"}, {}]'
    )
    assert load_inputs_file(path) == [
        [
            'Prompt=a "cat"',
            "Seed=12345678901234567890",  # exactly, not through a double
            "Strength=0.1",
            "Big=1e400",  # as written: the tunable says what it takes
            "Refine=true",
            f"Image=@{tmp_path / 'in' / 'cat.png'}",  # beside the inputs file
            "Abs=@/x/y.png",
        ],
        ["Refine=false", "Home=@~/z.png"],
        [],
    ]
    one = tmp_path / "one.json"
    one.write_text('{"Message": "hi"}')
    assert load_inputs_file(one) == [["Message=hi"]]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "no such file"),
        ("{", "is not valid JSON: Expecting property name enclosed in double quotes at line 1"),
        ("3", "holds the number 3; expected an object of inputs"),
        ('"x"', "holds a string; expected an object of inputs"),
        ("[]", "holds an empty list: no job to run"),
        ('[{"Seed": 1}, 2]', "job 2 is the number 2; each job is an object of inputs"),
        ('{"Seed": null}', "Seed is null; a value is a string, a number or a boolean (leave"),
        ('{"Seed": [1, 2]}', "Seed is a list; a value is a string"),
        ('{"Seed": {"a": 1}}', "Seed is an object"),
        ('{"Seed": NaN}', "NaN is not a number a tunable takes"),
        ('{"Bad Name": 1}', "'Bad Name' is not a tunable name"),
    ],
)
def test_a_bad_inputs_file_is_refused_naming_the_path_and_the_problem(
    tmp_path: Path, text: str | None, says: str
) -> None:
    path = tmp_path / "inputs.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_inputs_file(path)
    assert f"--inputs-file {path}" in caught.value.message
    assert says in caught.value.message


def test_a_folder_or_binary_as_inputs_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder; name a JSON file"):
        load_inputs_file(tmp_path)
    binary = tmp_path / "x.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        load_inputs_file(binary)


# ------------------------------------------------------------------- through the command
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--sweep", "Message=a,,b"), "--sweep 'Message=a,,b': value 2 is empty"),
        (("--sweep", "Nope=1,2"), "job 1 of 2 (Nope=1): cowsay:v0.0.4 has no tunable 'Nope'"),
        (("--sweep", "Message=a", "--parallel", "0"), "--parallel 0 is out of range"),
        (("--sweep", "Message=a", "--max-jobs", "1001"), "--max-jobs 1001 is out of range"),
        (("--sweep", "Message=a", "--detach"), "--detach cannot be combined with --sweep"),
        (("--inputs-file", "missing.json"), "--inputs-file missing.json: no such file"),
    ],
)
def test_bad_sweep_input_is_exit_2_and_posts_nothing(
    profile: None, sweep_cli: CliRunner, args: tuple[str, ...], says: str
) -> None:
    result = sweep_cli(*RUN, *args)
    assert result.exit_code == 2, result.stderr
    assert says in _said(result)
    assert json.loads(sweep_cli("jobs", "list", "--json").stdout) == []


def _deposits(world: World, address: str) -> int:
    """How many deposits into ``address``'s market balance the chain has seen."""
    chain = LightChain(world.net.anvil.rpc_url)
    try:
        topics = [
            keccak(text="Deposited(address,address,uint256)"),
            bytes(12) + bytes.fromhex(address[2:]),
        ]
        return len(chain.logs("deposits", world.net.deployment.market, topics, 0))
    finally:
        chain.close()


def _providers(world: World) -> None:
    for account in world.net.providers:
        world.provider(account)


def test_a_sweep_runs_one_job_per_value_with_one_deposit(
    profile: None, creator: Creator, sweep_cli: CliRunner
) -> None:
    world = creator.world
    _providers(world)
    deposits = _deposits(world, creator.account.address)
    # 3 x 40 tokens is more than the 100 deposited: one deposit must cover all three offers
    result = sweep_cli(*RUN, "--sweep", "Message=a,b,c", "--max-price", "40", "--json")
    assert result.exit_code == 0, result.stderr
    records: list[dict[str, Any]] = json.loads(result.stdout)
    assert [r["tunables"]["Message"] for r in records] == ["a", "b", "c"]
    assert [r["state"] for r in records] == ["accepted"] * 3
    assert len({r["result_cid"] for r in records}) == 3
    for record in records:
        said = (Path(record["output_dir"]) / "outputs" / "cowsay.txt").read_text()
        assert f"< {record['tunables']['Message']} >" in said
    assert _deposits(world, creator.account.address) == deposits + 1
    listed = json.loads(sweep_cli("jobs", "list", "--json").stdout)
    assert sorted(r["job_offer_id"] for r in listed) == sorted(r["job_offer_id"] for r in records)


def test_the_report_lists_every_job(profile: None, creator: Creator, sweep_cli: CliRunner) -> None:
    _providers(creator.world)
    result = sweep_cli(*RUN, "--sweep", "Message=x,y", "--parallel", "1")
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert rows[0] == ["job", "Message", "state", "CID", "outputs"]
    assert [row[:3] for row in rows[1:]] == [["1", "x", "accepted"], ["2", "y", "accepted"]]
    records = {
        r["tunables"]["Message"]: r for r in json.loads(sweep_cli("jobs", "list", "--json").stdout)
    }
    assert [row[3:] for row in rows[1:]] == [
        [records[m]["result_cid"], records[m]["output_dir"]] for m in ("x", "y")
    ]
    assert "[1/2] Message=x: offer posted" in _said(result)  # progress, one line a step


def test_one_bad_combination_posts_nothing_and_deposits_nothing(
    profile: None, creator: Creator, sweep_cli: CliRunner
) -> None:
    world = creator.world
    deposits = _deposits(world, creator.account.address)
    result = sweep_cli(*RUN, "--sweep", "Message=fine,also fine," + "x" * 501, "--max-price", "40")
    assert result.exit_code == 2, result.stderr
    assert "job 3 of 3" in _said(result)
    assert "value is 501 characters long; at most 500" in _said(result)
    assert "nothing was posted" in _said(result)
    assert json.loads(sweep_cli("jobs", "list", "--json").stdout) == []
    assert _deposits(world, creator.account.address) == deposits


def test_an_inputs_file_with_two_jobs_runs_both(
    profile: None, creator: Creator, sweep_cli: CliRunner, tmp_path: Path
) -> None:
    _providers(creator.world)
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps([{"Message": "first"}, {"Message": 2}]))
    result = sweep_cli(*RUN, "--inputs-file", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert [(r["tunables"]["Message"], r["state"]) for r in records] == [
        ("first", "accepted"),
        ("2", "accepted"),
    ]


def test_a_failed_job_is_reported_with_the_others_and_exit_1(
    profile: None, creator: Creator, sweep_cli: CliRunner
) -> None:
    # No provider: every offer expires unmatched and is withdrawn; both are reported.
    result = sweep_cli(*RUN, "--sweep", "Message=p,q", "--expires-in", "15")
    assert result.exit_code == 1, result.stderr
    assert "2 of the 2 jobs did not complete (job 1, 2)" in _said(result)


def test_ctrl_c_posts_no_more_jobs_and_withdraws_the_pending_offers(
    profile: None, creator: Creator
) -> None:

    specs = [cowsay(m) for m in ("one", "two", "three")]
    outcomes = [
        Outcome(n, [], {"Message": s.tunables["Message"]}, s) for n, s in enumerate(specs, 1)
    ]
    posted: list[str] = []

    def make_runner(on_step: Any) -> Any:
        runner = creator.runner()

        def step(step: Step) -> None:
            on_step(step)
            if step.name == "posted":
                posted.append(step.detail["job_offer_id"])
                _thread.interrupt_main()  # Ctrl-C once the first offer is up (no provider runs)

        runner.on_step = step
        return runner

    board = Board(outcomes, live=False, quiet=True)
    options = creator.options(specs[0])
    with pytest.raises(KeyboardInterrupt):
        run_many(outcomes, make_runner, options, parallel=1, board=board)
    assert len(posted) == 1  # the other two were never posted
    (record,) = load_records()
    assert record.job_offer_id == posted[0]
    assert record.state is JobState.CANCELLED
    with SolverClient(creator.world.server.url) as solver:
        assert solver.job_offer(posted[0]).state == "cancelled"


def test_parallel_without_many_jobs_is_exit_2(profile: None, sweep_cli: CliRunner) -> None:
    result = sweep_cli(*RUN, "-i", "Message=hi", "--parallel", "4")
    assert result.exit_code == 2, result.stderr
    assert "--parallel 4 is for many jobs at once: give --sweep or --inputs-file" in result.stderr
