"""Mutation testing of the decision-making code: how many mutants of each area its fast tests kill.

Runs mutmut (``pip install -e '.[mutation]'``) once per area, in a scratch copy of the working tree (mutmut
writes its mutants under the copy, never into the checkout), mutating only the functions that decide
(promotion, rollout and rollback, checkpoint restore, staging order, cache keys) against the tests chosen for
that area. Slow (minutes to an hour per area on two cores), so it is not part of ``scripts/test``.

    .venv/bin/python -m bench.mutation                  # every area
    .venv/bin/python -m bench.mutation cache-keys       # one area; results are cached in the scratch copy
    .venv/bin/python -m bench.mutation --report         # print the table again from the cached results
    .venv/bin/python -m bench.mutation cache-keys --rerun-survivors   # only last run's survivors, after new tests
    .venv/bin/python -m bench.mutation cache-keys --resume            # only the mutants a stopped run left unchecked

Equivalent mutants (a change no user can observe) are listed in ``EQUIVALENT`` with the reason, and are
counted apart from the survivors.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALSO_COPY = ["flows", "tasks", "deployments", "bench", "examples", "infra", "scripts", "prefect.yaml"]


@dataclass(frozen=True)
class Area:
    """Files mutmut may mutate, the mutant names (globs) that count, and the tests that must kill them."""

    files: tuple[str, ...]
    mutants: tuple[str, ...]
    tests: tuple[str, ...]


AREAS: dict[str, Area] = {
    "promotion": Area(
        files=("shipyard/registry/gate.py",),
        mutants=("shipyard.registry.gate.x_verdict__*",),
        tests=("tests/unit/test_promotion.py",),
    ),
    # The gate's alias moves and decisions against a real SQLite registry in the test process (seconds); the same
    # against a real MLflow server is tests/integration/test_registry_gate.py.
    "promotion-registry": Area(
        files=("shipyard/registry/gate.py", "shipyard/registry/aliases.py"),
        mutants=tuple(f"shipyard.registry.gate.x_{f}__*" for f in ("judge", "_decide", "already_champion",
                                                                   "promote", "_check_promotable", "load_failure"))
        + tuple(f"shipyard.registry.aliases.x_{f}__*" for f in ("move", "_set", "_restore", "record", "history")),
        tests=("tests/unit/test_promotion_registry.py",),
    ),
    # The champion/live-version decisions alone, against a real SQLite registry and an in-memory target (seconds).
    "rollout-champion": Area(
        files=("shipyard/rollout/champion.py",),
        mutants=("shipyard.rollout.champion.*",),
        tests=("tests/unit/test_rollout_champion.py",),
    ),
    # The Kubernetes target's roll out, wait, smoke test and restore, against a fake API server over HTTP and a fake
    # Deployment controller in the test process (seconds per mutant).
    "rollout-rollback": Area(
        files=("shipyard/rollout/kubernetes.py",),
        mutants=tuple(f"shipyard.rollout.kubernetes.{f}__*" for f in (
            "x_pinned_model", "xǁKubernetesTargetǁroll_out", "xǁKubernetesTargetǁ_wait",
            "xǁKubernetesTargetǁ_smoke_test", "xǁKubernetesTargetǁ_restore", "xǁKubernetesTargetǁ_read")),
        tests=("tests/integration/test_rollout_kube.py",),
    ),
    # The local target's roll out against a real inference server (one per test module, started by the rollout
    # it checks) and a SQLite registry: no MLflow or Prefect server, 20-40 s per mutant.
    "rollout-local": Area(
        files=("shipyard/rollout/local.py",),
        mutants=("shipyard.rollout.local.xǁLocalTargetǁroll_out__*",),
        tests=("tests/integration/test_rollout_local.py",),
    ),
    "checkpoint-restore": Area(
        files=("shipyard/training/checkpoint.py", "shipyard/training/loop.py"),
        mutants=("shipyard.training.checkpoint.*", "shipyard.training.loop.xǁLoopǁresume__*",
                 "shipyard.training.loop.xǁLoopǁstate__*", "shipyard.training.loop.xǁBatchesǁepoch__*"),
        tests=("tests/unit/test_checkpoint.py", "tests/unit/test_training_resume.py",
               "tests/unit/test_training_batches.py",
               "tests/unit/test_training.py::test_a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one",
               "tests/unit/test_training.py::test_sigterm_checkpoints_and_the_resumed_run_equals_an_uninterrupted_one"),
    ),
    "staging-order": Area(
        files=("shipyard/datasets/worklist.py", "shipyard/datasets/transfer.py", "shipyard/datasets/stage.py"),
        mutants=("shipyard.datasets.worklist.*", "shipyard.datasets.transfer.x_in_order__*",
                 "shipyard.datasets.transfer.x__resolve__*", "shipyard.datasets.stage.x__publish__*"),
        tests=("tests/unit/test_datasets.py", "tests/unit/test_worklist.py"),
    ),
    "cache-keys": Area(
        files=("shipyard/training/codehash.py", "shipyard/training/trainer.py", "shipyard/datasets/hashing.py"),
        mutants=("shipyard.training.codehash.*", "shipyard.training.trainer.x_inputs_key__*",
                 "shipyard.training.trainer.x_training_key__*", "shipyard.training.trainer.x_plan_training__*",
                 "shipyard.training.trainer.x__last_code_hash__*", "shipyard.datasets.hashing.*"),
        tests=("tests/unit/test_codehash.py", "tests/unit/test_hashing.py", "tests/unit/test_datasets.py"),
    ),
}

_SQL_CASE = "SQLite keywords, pragma and column names are case-insensitive"
_SCAN = ("the ordered scan is a shortcut: when it yields nothing, get() asks the same table with a point query, "
         "so the answer is the same (only slower)")
_BUSY = "SQLite busy timeout of 31 s instead of 30 s"
_CODE = "training_key() computes the same code hash itself when given None"
_FORCE = "only the forced key's salt constant changes: a forced run still gets a key of its own"
_SEED = ("another seed per (seed, epoch): a resumed run still sees the batches the uninterrupted one saw, "
         "and epochs still differ")
_UTF8 = ("open() without an encoding uses the locale's, which is UTF-8 on every supported image (C.UTF-8); "
         "'UTF-8' and 'utf-8' name the same codec")
_POSIX_NL = "writing with newline=None translates '\\n' to os.linesep, '\\n' on the POSIX hosts staging runs on"
_SCRATCH = "the name of a file in the staging's private temporary directory, which nothing else reads"
_TXN = ("every write is wrapped in an explicit BEGIN/COMMIT, so the driver's implicit transactions (the default "
        "isolation level) never start: the same statements reach SQLite")
_TICK = ("the progress heartbeat while a result is waited on comes every 1.2 s instead of 0.2 s: same results, "
         "only the tick cadence, which no test may time")
_NS = "a 1 ns shift of the 100 ms racy boundary, which no file's timestamps can be placed on"
_EVERY = ("committing after every entry instead of every second: the same entries reach the file, sooner; only the "
          "number of commits (speed) changes, which no test may time")
_SECOND = "a flush when exactly 1.0 s has passed on the monotonic clock, instead of just after"
_FOUND = ("returns no row for the path it found (the point query then finds it) and another path's row only when "
          "this path has none, used only if its stat is this file's (the _scanned 40 case)")
_COLON = ("entrypoints are validated as 'module:function' (one ':'), where partition and rpartition split alike")
_LEN = ("keys one hex digit longer: every key is still the same function of its inputs, and nothing reads their "
        "length (the version is part of the key, so no older key is ever looked up)")
_SALT = "only the unforced key's salt constant changes: forced keys are salted with 'force' or a run id, not it"
_BYTES = ("git's output as bytes: RecipeCode decodes the ASCII commit id to the same str, and the status output is "
          "only tested for emptiness, the same for bytes and str")
_CHECK = "check=None or left out is subprocess.run's default, check=False"
_GIT_SLOW = "one second more before giving up on a git that hangs"
_SEP = ("another separator constant between a file's name and its digest (always 32 bytes): every code hash is still "
        "the same function of the files, and the key holds Shipyard's version, so no older hash is compared")
_DASHES = ("'XX--XX' instead of '--' before '.': one more pathspec, which matches nothing outside '.', so git "
           "status reports the same files")
_PROMOTE_PARAMS = ("promote builds RegisterParams only to carry the decision's metric: its model name, thresholds "
                   "(applied from the model's tag directly) and margin (none by hand) are never read")
_G = "shipyard.training.codehash.x__git__mutmut_"
_H = "shipyard.datasets.hashing.xǁHashCacheǁ"
_T = "shipyard.training.trainer.x_plan_training__mutmut_"
_W = "shipyard.datasets.worklist.xǁWorkListǁ"
_K = "shipyard.rollout.kubernetes.xǁKubernetesTargetǁ"
_KUBE_NS = ("lightkube sends a call without a namespace (or an object without one) to the client's default "
            "namespace, and the target's client is built for the settings' namespace (kube_client(self.namespace))")
_SPEC = "the API server refuses a Deployment without a spec, so every Deployment read back has one"
_TEMPLATE = ("a Deployment's pod template must carry labels matching its selector, so the API server never returns one "
             "without template metadata")

# mutant name -> why no user can tell it from the original (reviewed one by one)
EQUIVALENT: dict[str, str] = {
    **{f"{_H}_conn__mutmut_{n}": _SQL_CASE for n in (19, 20, 23, 24)},
    **{f"{_H}get__mutmut_{n}": _SQL_CASE for n in (11, 12, 14, 15)},
    **{f"{_H}_scanned__mutmut_{n}": _SQL_CASE for n in (18, 19, 21, 22)},
    f"{_H}_conn__mutmut_15": _BUSY, f"{_H}_scanned__mutmut_9": _BUSY,
    f"{_H}get__mutmut_2": _SCAN, f"{_H}__init____mutmut_7": _SCAN, f"{_H}__init____mutmut_8": _SCAN,
    **{f"{_H}_scanned__mutmut_{n}": _SCAN for n in (1, 23, 30, 35, 39, 43)},
    f"{_H}_scanned__mutmut_40": "a row of another path is only used if its (dev, inode, size, mtime, ctime) equal "
                                "this file's: the same file under another name (a hard link), same bytes",
    **{f"{_W}remember__mutmut_{n}": _SQL_CASE for n in (3, 9, 10, 13)},
    **{f"{_W}plan__mutmut_{n}": _SQL_CASE for n in (3, 9, 10, 12, 13, 17)},
    **{f"{_W}plan__mutmut_{n}": "another split limit: field 1 (the size) is the same" for n in (23, 26)},
    **{f"{_W}plan__mutmut_{n}": _SQL_CASE for n in (30, 31)},
    **{f"{_W}known__mutmut_{n}": _SQL_CASE for n in (7, 8)},
    **{f"{_W}missing__mutmut_{n}": _SQL_CASE for n in (3, 4)},
    **{f"{_W}__init____mutmut_{n}": _SQL_CASE for n in (29, 30)},
    **{f"{_W}__init____mutmut_{n}": _UTF8 for n in (8, 12, 17)},
    **{f"{_W}files__mutmut_{n}": _UTF8 for n in (2, 5, 8)},
    **{f"{_W}__init____mutmut_{n}": _POSIX_NL for n in (9, 13)},
    **{f"{_W}__init____mutmut_{n}": _SCRATCH for n in (3, 4, 24, 25)},
    f"{_W}__init____mutmut_22": _TXN,
    "shipyard.datasets.transfer.x__resolve__mutmut_8": _TICK,
    **{f"{_T}{n}": _CODE for n in (13, 39, 42)},
    **{f"{_T}{n}": _FORCE for n in (2, 20, 21)},
    **{f"shipyard.training.loop.xǁBatchesǁepoch__mutmut_{n}": _SEED for n in (3, 5)},
    "shipyard.training.loop.xǁLoopǁstate__mutmut_22": (
        "CUDA RNG states asked for without CUDA: get_rng_state_all() returns [] (no devices), and resuming from [] "
        "restores nothing, as from None; with CUDA the branch is taken either way"),
    "shipyard.registry.gate.x_verdict__mutmut_15": "float('NAN') is float('nan'): the parser ignores case",
    **{f"shipyard.rollout.champion.x_serve_champion__mutmut_{n}": "a waiting rollout looks at the turn every 0.25 s "
       "or 1.5 s instead of 0.5 s: the same turns in the same order, only the cadence" for n in (31, 38)},
    **{f"{_H}_flush__mutmut_{n}": _SQL_CASE for n in (6, 7)},
    **{f"{_H}_scanned__mutmut_{n}": _SCAN for n in (34,)},
    f"{_H}get__mutmut_3": _SCAN, f"{_H}_scanned__mutmut_44": _FOUND,
    f"{_H}put__mutmut_9": _NS, f"{_H}put__mutmut_14": _EVERY, f"{_H}put__mutmut_15": _SECOND,
    "shipyard.training.codehash.x_code_files__mutmut_3": _COLON,
    **{f"{_G}{n}": _BYTES for n in (4, 9, 22, 30, 35, 50)},
    **{f"{_G}{n}": _CHECK for n in (6, 11, 32, 37)},
    **{f"{_G}{n}": _GIT_SLOW for n in (23, 51)},
    f"{_G}47": _DASHES,
    "shipyard.training.codehash.x_recipe_code__mutmut_7": _SEP,
    "shipyard.training.codehash.x_recipe_code__mutmut_24": _LEN,
    **{f"shipyard.training.trainer.x_{f}__mutmut_{n}": _LEN for f, n in (("inputs_key", 11), ("training_key", 12))},
    "shipyard.training.trainer.x_training_key__mutmut_1": _SALT,
    **{f"{_K}{f}__mutmut_{n}": _KUBE_NS for f, n in (("_read", 4), ("_read", 7), ("_wait", 14), ("_wait", 17),
                                                      ("_restore", 5), ("_restore", 8), ("_restore", 33),
                                                      ("_restore", 37))},
    "shipyard.rollout.kubernetes.x_pinned_model__mutmut_3": _SPEC,
    **{f"shipyard.rollout.kubernetes.x_pinned_model__mutmut_{n}": _TEMPLATE for n in (7, 8)},
    f"{_K}_smoke_test__mutmut_34": "'' is no list either: the same KubeError follows as for None",
    f"{_K}_smoke_test__mutmut_15": "the smoke test gives up on a server that hangs after 61 s instead of 60 s",
    **{f"shipyard.rollout.local.xǁLocalTargetǁroll_out__mutmut_{n}": "'post'/'delete' name the same request as "
       "'POST'/'DELETE': httpx upper-cases the method" for n in (79, 93)},
    "shipyard.rollout.local.xǁLocalTargetǁroll_out__mutmut_87": "check=None is falsy like check=False: _admin takes "
                                                                 "the same branches",
    **{f"shipyard.registry.gate.x_promote__mutmut_{n}": _PROMOTE_PARAMS for n in (54, 55, 56, 58)},
    "shipyard.registry.gate.x_promote__mutmut_97": "float('NAN') is float('nan'): the parser ignores case",
    "shipyard.registry.gate.x_promote__mutmut_104": "float('-INF') is float('-inf'): the parser ignores case",
    "shipyard.registry.aliases.x_record__mutmut_1": "a default order of 1 for 0: a lone entry has no other entry "
                                                     "of its move to sort against",
    "shipyard.registry.aliases.x_record__mutmut_4": "'XX' around the time in every name: the names still sort by time",
    "shipyard.registry.aliases.x_record__mutmut_5": "'%y%m%dt%h%m%s%fz': two-digit year, month and day still lead, "
                                                     "then epoch seconds and microseconds: the same order until 2100",
    "shipyard.registry.aliases.x_record__mutmut_7": "9 random hex digits in the name instead of 8",
    "shipyard.registry.gate.x__decide__mutmut_59": "scores.metrics.get('XXXX') for get('') without a champion: "
                                                   "neither is a version, both give None",
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "killed"}


def prepare(area: str, spec: Area, scratch: Path, timeout_multiplier: int = 3) -> Path:
    """Copy the tracked tree into ``scratch/area`` (keeping mutmut's cache) and write its mutmut config."""
    work = scratch / area
    work.mkdir(parents=True, exist_ok=True)
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.splitlines()
    for rel in tracked:
        src, dst = ROOT / rel, work / rel
        if src.is_file() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    lines = ["[mutmut]", "source_paths = shipyard", "only_mutate =", *(f"    {f}" for f in spec.files),
             "also_copy =", *(f"    {p}" for p in ALSO_COPY),
             "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in spec.tests),
             "pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -m", "    not drill and not cluster",
             "process_isolation = forkserver", "use_git_change_detection = false",
             # a mutant that makes a test hang is a kill; waiting 15 times the test's time for it (the default)
             # costs most of a run on a shared machine
             f"timeout_multiplier = {timeout_multiplier}", ""]
    (work / "setup.cfg").write_text("\n".join(lines))
    return work


def run(area: str, spec: Area, scratch: Path, children: int, only: list[str] | None = None,
        timeout_multiplier: int = 3) -> None:
    """Run mutmut over the area's mutants (or only the named ones, e.g. the survivors after adding tests)."""
    work = prepare(area, spec, scratch, timeout_multiplier)
    before = _codes(work, spec)
    mutmut = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "PYTHONPATH": str(work / "mutants")}
    for _ in range(2):  # mutmut's first statistics run sometimes fails where the second passes
        done = subprocess.run([str(mutmut), "run", "--max-children", str(children), *(only or spec.mutants)],
                              cwd=work, env=env, check=False)
        if done.returncode == 0:
            break
    if only:  # mutmut may blank the results of mutants it was not given: keep theirs from before
        for meta, codes in _codes(work, spec).items():
            kept = {name: code if code is not None or name in only else before.get(meta, {}).get(name)
                    for name, code in codes.items()}
            if kept != codes:
                data = json.loads(meta.read_text())
                meta.write_text(json.dumps({**data, "exit_code_by_key": kept}))


def _codes(work: Path, spec: Area) -> dict[Path, dict[str, int | None]]:
    """Return mutmut's exit code per mutant, per result file of the area's files."""
    metas = [work / "mutants" / f"{file}.meta" for file in spec.files]
    return {meta: json.loads(meta.read_text())["exit_code_by_key"] for meta in metas if meta.exists()}


def results(area: str, spec: Area, scratch: Path) -> dict[str, list[str]]:
    """Return the area's mutant names by outcome, from mutmut's cached results."""
    by: dict[str, list[str]] = {}
    for codes in _codes(scratch / area, spec).values():
        for name, code in codes.items():
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in spec.mutants):
                continue
            status = "equivalent" if name in EQUIVALENT else STATUS.get(code, "not checked" if code is None
                                                                         else "suspicious")
            by.setdefault(status, []).append(name)
    return by


def table(areas: list[str], scratch: Path) -> str:
    """Render the per-area table (markdown) with the share of non-equivalent mutants killed."""
    rows = ["| Area | Mutants | Checked | Killed | Survived | Timeouts | Equivalent | No tests | Score |",
            "|------|---------|---------|--------|----------|----------|------------|----------|-------|"]
    for area in areas:
        by = results(area, AREAS[area], scratch)
        n = {k: len(v) for k, v in by.items()}
        total = sum(n.values())
        caught = n.get("killed", 0) + n.get("timeout", 0)
        counted = total - n.get("equivalent", 0) - n.get("not checked", 0)
        score = f"{100 * caught / counted:.0f}%" if counted else "—"
        cells = [area, total, total - n.get("not checked", 0), *(n.get(k, 0) for k in
                 ("killed", "survived", "timeout", "equivalent", "no tests")), score]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("areas", nargs="*", help=f"areas to run (default: all): {', '.join(AREAS)}")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/shipyard-mutation"),
                        help="where the copies and mutmut's cache live")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--report", action="store_true", help="only print the table from cached results")
    parser.add_argument("--survivors", action="store_true", help="also list the surviving mutants")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="run again only the mutants that survived last time (after adding tests)")
    parser.add_argument("--rerun-timeouts", action="store_true",
                        help="run again only last time's timeouts (with a larger --timeout-multiplier: on a loaded "
                             "machine a slow run of a surviving mutant reads as a timeout, which counts as a kill)")
    parser.add_argument("--resume", action="store_true",
                        help="run only the mutants without a result yet (a stopped run): given the area's patterns, "
                             "mutmut runs every mutant again, checked or not")
    parser.add_argument("--timeout-multiplier", type=int, default=3,
                        help="a mutant's time limit in multiples of its tests' measured time")
    args = parser.parse_args(argv)
    areas = args.areas or list(AREAS)
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        parser.error(f"unknown area {unknown[0]!r}: choose from {', '.join(AREAS)}")
    if not args.report:
        for area in areas:
            by = results(area, AREAS[area], args.scratch)
            rerun = (by.get("survived", []) if args.rerun_survivors else []) + (
                by.get("timeout", []) if args.rerun_timeouts else []) + (
                by.get("not checked", []) if args.resume else [])
            if (args.rerun_survivors or args.rerun_timeouts or args.resume) and not rerun:
                continue
            run(area, AREAS[area], args.scratch, args.children, rerun or None, args.timeout_multiplier)
    print(table(areas, args.scratch))
    if args.survivors:
        for area in areas:
            for name in sorted(results(area, AREAS[area], args.scratch).get("survived", [])):
                print(f"survived: {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
