"""harness.runlog: the divergence policy, the JSON type check and the size cap on a log read whole."""
import errno
import math

import pytest

from harness.runlog import DIVERGED_ABOVE, MAX_LOG_BYTES, divergence, read_regular, type_problem

V = 50304
UNIFORM = math.log(V)


@pytest.mark.parametrize("val, train, why", [
    ([10.8, 5.0, math.nan], [], "val loss nan is not finite"),
    ([10.8, 5.0, 4.0], [6.0, math.inf], "train loss inf is not finite"),
    ([10.8, 5.0, 4.0], [6.0, None], "train loss None is not finite"),
    ([10.8, UNIFORM, UNIFORM], [3.3e7, UNIFORM], "train loss 3.3e+07 is above 2 x ln(vocab 50304) = 21.65"),
    ([10.8, 30.0, 4.0], [], "val loss 30 is above"),
    ([10.8, 10.9, UNIFORM], [10.9, 10.85], "final val loss 10.8258 is not below ln(vocab 50304) = 10.8258"),
    ([10.8, 12.0, 11.5], [], "no better than guessing uniformly"),
    ([10.83, 6.0, 10.9], [], "final val loss 10.9000 is not below"),
], ids=["nan-val", "inf-train", "null-train", "exploded-then-uniform", "val-far-above", "stuck-at-uniform", "above-uniform",
        "learned-then-lost"])
def test_divergence_names_why(val, train, why):
    reason = divergence(val, train, V)
    assert reason is not None and why in reason and "\n" not in reason


def test_healthy_runs_and_unknown_vocab():
    assert divergence([10.83, 11.2, 6.0, 3.28], [10.9, 11.5, 6.1, 3.3], V) is None  # an early spike near ln V
    assert divergence([10.8, 20.0, 10.9], [3.3e7], None) is None  # no vocabulary stated: only non-finite counts
    assert divergence([10.8, 20.0, math.nan], [], None) == "val loss nan is not finite"
    assert divergence([10.83], [], V, finished=False) is None  # stopped at step 0: not judged on its final loss
    # a 4-step smoke run of the real trainer: not yet off ln V, not collapsed onto it either
    assert divergence([10.8258, 10.8282, 10.8305], [10.83, 10.84], V) is None
    assert DIVERGED_ABOVE * UNIFORM == pytest.approx(21.65, abs=0.01)


TYPES = {"n": "integer", "note": "string|absent", "prev": "object|null|absent", "prev.name": "string",
         "prev.ci": "array|null"}


@pytest.mark.parametrize("obj, absent_ok, problem", [
    ({"n": 1, "prev": {"name": "a", "ci": None}}, False, None),
    ({"n": 1, "prev": None}, False, None),  # under a null object nothing is checked
    ({"n": 1}, False, None),  # nor under an absent one
    ({"n": 1.5}, False, "n is a number, expected integer"),
    ({"n": True}, False, "n is a boolean, expected integer"),  # a boolean is never an integer
    ({"prev": {}}, False, "n missing"),
    ({"prev": {}}, True, None),  # absent keys are fine by default
    ({"n": 1, "note": None}, False, "note is null, expected string"),  # 'absent' is not in the message
    ({"n": 1, "prev": {"ci": []}}, False, "prev.name missing"),
    ({"n": 1, "prev": {"name": 2}}, True, "prev.name is an integer, expected string"),
    ({"n": 1, "prev": "x"}, False, "prev is a string, expected object or null"),
])
def test_type_problem_walks_dotted_keys(obj, absent_ok, problem):
    assert type_problem(obj, TYPES, absent_ok=absent_ok) == problem
    assert type_problem(obj, TYPES, "row", absent_ok=absent_ok) == (problem and f"row.{problem}")


def test_read_regular_refuses_a_file_over_its_limit(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"x" * 10)
    assert read_regular(path, limit=10) == b"x" * 10
    path.write_bytes(b"x" * 11)
    with pytest.raises(OSError) as exc:
        read_regular(path, limit=10)
    assert (exc.value.errno, exc.value.filename) == (errno.EFBIG, str(path))
    assert exc.value.strerror == "larger than 10 bytes, more than any training log"
    assert read_regular(path, limit=None) == b"x" * 11


@pytest.mark.parametrize("name", ["run/events.jsonl", "big.txt"], ids=["events", "text-log"])
def test_a_log_over_64_mib_is_one_line_naming_it(tmp_path, name):
    """The default cap is MAX_LOG_BYTES (64 MiB), far above any real log; a larger events.jsonl or text log (sparse
    here: it takes no disk) is refused in one line naming it, without reading past the cap."""
    from harness.logs import LogError, load_run

    assert MAX_LOG_BYTES == 64 * 2**20
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(MAX_LOG_BYTES)
    assert len(read_regular(path)) == MAX_LOG_BYTES
    with open(path, "r+b") as f:
        f.truncate(MAX_LOG_BYTES + 1)
    why = f"larger than {MAX_LOG_BYTES} bytes, more than any training log"
    with pytest.raises(OSError) as exc:
        read_regular(path)
    assert exc.value.strerror == why
    with pytest.raises(LogError) as exc:
        load_run(path.parent if path.name == "events.jsonl" else path)
    assert str(exc.value) == f"{path}: cannot read ({why})"


def test_a_line_nested_deeper_than_the_parser_goes_is_a_damaged_line(tmp_path):
    """json.loads raises RecursionError, not ValueError, on an array nested 100000 deep: the line is reported and
    skipped like any damaged line, and the lines around it still load."""
    from harness.runlog import iter_json_lines

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n' + "[" * 100000 + "]" * 100000 + '\n{"b": 2}\n')
    problems = []
    assert list(iter_json_lines(path, problems)) == [(1, {"a": 1}), (3, {"b": 2})]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: skipped damaged line (maximum recursion depth")


def test_an_events_line_that_is_json_but_no_event_is_a_damaged_line(tmp_path):
    from harness.runlog import read_events

    (tmp_path / "events.jsonl").write_text('{"event": "config"}\n[1, 2]\n{"step": 3}\n{"event": "val"}\n')
    events, problems = read_events(tmp_path)
    assert events == [{"event": "config"}, {"event": "val"}]
    assert problems == [f"{tmp_path / 'events.jsonl'}:{n}: skipped damaged line (not an event object)" for n in (2, 3)]
