"""Error messages name the Python argument; the CLI prints them naming the flag (as_flags)."""

from __future__ import annotations

import pickle

from leanvision.errors import DatasetError, as_flags

VERBS = {"list_models": "models", "evaluate": "eval"}.get


def test_arguments_become_flags():
    assert as_flags("Pass skip_bad_images=True to evaluate", VERBS) == \
        "Pass --skip-bad-images to evaluate"
    assert as_flags("or skip_bad_images=False.", VERBS) == "or --no-skip-bad-images."
    assert as_flags("pass it as data=PATH; max_drop=0.5.", VERBS) == \
        "pass it as --data PATH; --max-drop 0.5."


def test_api_functions_become_verbs_and_other_code_stays():
    message = "see `leanvision.list_models()`; `timm.create_model('x', pretrained=True)`"
    assert as_flags(message, VERBS) == \
        "see `leanvision models`; `timm.create_model('x', pretrained=True)`"
    assert as_flags("see leanvision.nothing_here()", VERBS) == "see leanvision.nothing_here()"


def test_what_is_not_an_argument_stays():
    for text in ("http://host:5000/?a=1", "--max-drop=2 is", "a path/x=1", "x == 1"):
        assert as_flags(text, VERBS) == text


def test_details_ride_along_and_the_error_still_pickles():
    error = DatasetError("bad", {"bad_images": [{"file": "a.jpg", "reason": "empty"}]})
    assert error.details["bad_images"][0]["file"] == "a.jpg"
    again = pickle.loads(pickle.dumps(error))  # errors cross process boundaries (nproc)
    assert str(again) == "bad" and isinstance(again, DatasetError)
