"""Shared fixtures: micro encoders (built in well under a second) and an isolated cache."""

from __future__ import annotations

import os

import pytest
import torch

from core.tiny.architectures import random_encoder
from sweeps.local import usable_cores
from tests.helpers import FAMILIES, micro_arch


FAST = "not slow and not slurm"  # the default selection (pyproject's addopts)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (addopts): the whole fast suite (`pytest`) in one worker process per core, a file to a
    worker; what else is asked for runs in this process, at every thread: chosen tests or files, and the
    slow, Slurm and real-shape tests (they build the real bases the main job reuses, or wait on a scheduler)."""
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    return usable_cores() if whole_suite and config.option.markexpr == FAST else 0


def pytest_configure(config):
    """Each worker computes with its share of the cores, set before any test runs: two workers of two
    threads on two cores slowed each other down many times (a test of 5 s alone took 60 s so)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, usable_cores() // workers))


USER_CACHE = os.environ.get("AMDET_CACHE")  # what slow tests build into and read (they need the real bases)


@pytest.fixture(scope="module", autouse=True)
def isolated_module_cache(tmp_path_factory):
    """A module's own fixtures are set up before any test's (a micro study, micro towers): they build into
    the session's cache too, never the user's, whichever test, fast or slow, first asks for them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMDET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path_factory, monkeypatch):
    """Unit tests never read or write the user's cache; slow tests use it (they need the real bases)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("AMDET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    elif USER_CACHE is None:
        monkeypatch.delenv("AMDET_CACHE", raising=False)
    else:
        monkeypatch.setenv("AMDET_CACHE", USER_CACHE)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def micro_encoder(family):
    torch.manual_seed(0)
    return random_encoder(micro_arch(family), seed=0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A micro model and a different micro anchor of the same architecture, saved as HF dirs."""
    root = tmp_path_factory.mktemp("scan")
    random_encoder(micro_arch("clip"), seed=0).save(root / "model")
    random_encoder(micro_arch("clip"), seed=1).save(root / "anchor")
    return root / "model", root / "anchor"
