"""Empirical confirmation: re-run the workload once per doubtful capability, without it.

The kernel's record says which capabilities were checked and granted, not which ones the
service would miss: capset() asks CAP_SETPCAP even when the daemon only drops its own
capabilities, a chown of a pid file asks CAP_CHOWN when the daemon ignores its failure.
Seed 004's "start blank and tighten" answers that by hand; this does it the same way:
the same command, identity and duration, with the capability out of the bounding set,
then compares what the two runs did that a user of the service would notice.

- Doubtful: a required capability no call site has proven, i.e. no re-run without it
  showed its check denied and that syscall failing with EPERM/EACCES while the
  behaviour changed (that proof is kept in the profile, so a second confirm skips it).
- A control re-run with nothing dropped comes first: facts that differ between two
  unchanged runs (a random temporary name, a cache written once) are not compared, and
  a workload that does not repeat its exit (or fails --check) is not confirmed at all.
- Drops accumulate: a capability found unneeded stays dropped in the later re-runs, so
  the last surviving re-run ran without every capability made optional.
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from dataclasses import dataclass, replace

from .model import WRITE_OPS
from .needs import DEFAULT_LOCAL_PORT_RANGE, KERNEL_METHODS, bind_plan
from .paths import decode_path
from .render.summary import target_failure
from .session import RunOptions, run_session

DENIAL_ERRNOS = ("EPERM", "EACCES")
# Owner, mode, times and xattrs are what CAP_CHOWN/CAP_FOWNER gate: their failure is the
# drop itself, reported as a failure the workload carried on after, not as a lost write.
METADATA_OPS = frozenset({"chown", "chmod", "utime", "xattr"})
CONTENT_OPS = WRITE_OPS - METADATA_OPS
# A run that was not stopped by --duration gets this long (times the base run) before a
# re-run is stopped: a workload that hangs without a capability has changed behaviour.
ONE_SHOT_LIMIT_FACTOR = 3.0
ONE_SHOT_LIMIT_MIN = 10.0
FACT_ORDER = ("exit", "check", "exercise", "listening", "notify", "wrote")


class ConfirmError(Exception):
    """Confirmation cannot run; the message is one line."""


@dataclass(frozen=True)
class Observation:
    """What one run did that a user of the service would notice, and its refused syscalls."""

    facts: frozenset[tuple[str, str]]     # (kind, detail); kind in FACT_ORDER
    denials: frozenset[tuple[str, str]]   # (syscall, errno) that failed with EPERM/EACCES
    failures: frozenset[tuple[str, str]]  # (exe, how) of processes that exited non-zero or by a signal


@dataclass(frozen=True)
class Rerun:
    """One re-run: the capabilities it went without (beyond the base run's own) and its profile."""

    dropped: tuple[str, ...]
    profile: dict
    check_status: int | str | None  # the check's exit, "not run", or None without --check
    seconds: float


@dataclass(frozen=True)
class Verdict:
    same: bool
    difference: str | None           # the first differing fact, in words
    proof: dict | None               # a denied check of a dropped capability whose syscall then failed
    ignored: tuple[str, ...]         # denied syscalls of the dropped capabilities it carried on after
    inconclusive: str | None = None  # why the run could not judge (the capability was never asked)


@dataclass(frozen=True)
class Judged:
    """The verdict on one doubtful capability."""

    capability: str
    rerun: Rerun | None  # None: not re-run, the control re-run never asked for it
    verdict: Verdict


def _exit_words(run: dict) -> str:
    """'exit status 1', 'exit status 143 (SIGTERM) after --duration': how the run ended."""
    signal_name = f" ({run['exit_signal']})" if run.get("exit_signal") else ""
    ended_by = run.get("ended_by", "exit")
    how = "" if ended_by == "exit" else " after --duration" if ended_by == "duration" else f" after {ended_by}"
    return f"exit status {run.get('exit_status')}{signal_name}{how}"


def observe(profile: dict, check_status: int | str | None = None) -> Observation:
    """The comparable facts of PROFILE (pure)."""
    facts = {("exit", _exit_words(profile["run"]))}
    if check_status == 0:
        facts.add(("check", "passed"))
    for f in profile.get("files", []):
        if set(f.get("ops", {})) & CONTENT_OPS:
            facts.add(("wrote", f["path"]))
    net = profile.get("network", {})
    local_ports = tuple(profile.get("host", {}).get("ip_local_port_range") or DEFAULT_LOCAL_PORT_RANGE)
    for b in bind_plan(net.get("binds", []), net.get("listens", []), local_ports).listening:
        facts.add(("listening", f"{b['family']} {b.get('type') or '?'} {b.get('address')}:{b.get('port')}"))
    for message in profile["run"].get("notifications", []):
        for word in message.get("words", []):
            facts.add(("notify", word.partition("=")[0]))
    for exercise in profile["run"].get("exercises", []):
        if exercise.get("exit") == 0:
            facts.add(("exercise", exercise.get("command")))
    denials = {(name, errno) for name, row in profile.get("syscalls", {}).items()
               for errno in row.get("errors", {}) if errno in DENIAL_ERRNOS}
    # a worker that dies and is respawned leaves the main process's exit as it was
    failures = {(p.get("exe") or "?", f"killed by {p['exit_signal']}" if p.get("exit_signal")
                 else f"exited with status {p.get('exit_status')}")
                for p in profile.get("processes", []) if p.get("exit_signal") or p.get("exit_status")}
    return Observation(frozenset(facts), frozenset(denials), frozenset(failures))


def _lost_words(kind: str, detail: str, rerun_facts: frozenset) -> str:
    if kind == "exit":
        now = next((d for k, d in rerun_facts if k == "exit"), "?")
        return f"{now} instead of {detail}"
    return {"check": "the --check command failed",
            "exercise": f"the exercise {detail!r} failed",
            "listening": f"did not bind {detail}",
            "notify": f"sent no {detail}= to the notify socket",
            "wrote": f"did not write {detail}"}[kind]


def judge(reference: Observation, rerun: Rerun, tested: set[str], with_check: bool) -> Verdict:
    """Did the workload behave as in REFERENCE without the TESTED capabilities? (pure)

    With --check only the exit and the check count (the operator's definition of working);
    otherwise every fact of the reference, and no process may newly fail. A syscall that
    newly failed where a dropped capability was denied is the drop's own effect: for a
    TESTED one, proof when the behaviour changed, a failure the workload ignored when it did
    not (the earlier-confirmed ones, also dropped, were ignored before). Any other new
    EPERM/EACCES is a difference.
    """
    seen = observe(rerun.profile, rerun.check_status)
    compared = [f for f in reference.facts if not with_check or f[0] in ("exit", "check")]
    lost = sorted((f for f in compared if f not in seen.facts), key=lambda f: (FACT_ORDER.index(f[0]), f[1]))
    new_denials = sorted(seen.denials - reference.denials)
    denied_uses = [u for u in rerun.profile.get("capabilities", {}).get("uses", [])
                   if u.get("capability") in {*rerun.dropped, *tested} and u.get("status") == "optional"]
    own_syscalls = {u.get("syscall") for u in denied_uses}
    # (denied use of a tested capability, errno its syscall newly failed with)
    failed = [(u, errno) for u in denied_uses if u["capability"] in tested
              for syscall, errno in new_denials if syscall == u.get("syscall")]
    differences = [_lost_words(k, d, seen.facts) for k, d in lost]
    if not with_check:
        differences += [f"{exe} {how}" for exe, how in sorted(seen.failures - reference.failures)]
        differences += [f"{s} failed with {e}" for s, e in new_denials if s not in own_syscalls]
    if not differences and not asked(rerun.profile, tested):
        return Verdict(False, None, None, (), f"the re-run never asked for {' '.join(sorted(tested))}: "
                                              "surviving its absence proves nothing")
    if not differences:
        ignored = tuple(" ".join([u.get("syscall") or "?", *(u.get("targets") or [])[:1], f"({errno})"])
                        for u, errno in failed)
        return Verdict(True, None, None, ignored)
    proof = None
    if failed:
        u, errno = failed[0]
        proof = {"capability": u["capability"], "call_site": u.get("call_site"), "syscall": u.get("syscall"),
                 "errno": errno, **({"target": u["targets"][0]} if u.get("targets") else {})}
    return Verdict(False, differences[0], proof, ())


def asked(profile: dict, caps: set[str]) -> bool:
    """Whether the run's kernel record shows a check of any of CAPS (True without a kernel probe)."""
    section = profile.get("capabilities") or {}
    if section.get("method") not in KERNEL_METHODS:
        return True  # inferred capabilities: nothing to tell a skipped code path by
    return any(u.get("capability") in caps and u.get("status") != "advisory" for u in section.get("uses", []))


def _rows_of(section: dict, cap: str) -> list[dict]:
    """Required rows any of whose alternatives is CAP."""
    return [u for u in section.get("uses", []) if u.get("status") == "required"
            and cap in (u.get("alternatives") or [u.get("capability")])]


def doubtful_capabilities(section: dict) -> list[str]:
    """Required capabilities that no call site has proven (pure)."""
    return [cap for cap in section.get("required", [])
            if not any((u.get("confirmed_by") or {}).get("proof") for u in _rows_of(section, cap))]


def drop_group(section: dict, cap: str) -> set[str]:
    """CAP and the either-or alternatives that could stand in for it, other required ones excepted.

    Dropping CAP_DAC_READ_SEARCH alone would let CAP_DAC_OVERRIDE pass the same check: the
    workload would survive, yet the need is real.
    """
    others = set(section.get("required", [])) - {cap}
    group = {cap}
    for u in _rows_of(section, cap):
        group |= set(u.get("alternatives") or ()) - others
    return group


def apply_confirmation(section: dict, judged: list[Judged], summary: dict) -> dict:
    """The capabilities section with each verdict written into its rows (pure; a new dict).

    A capability the workload survived without becomes optional, its rows carrying the
    re-run as `confirmed_by`; one whose drop changed behaviour stays required with the
    first difference. `required` loses exactly the capabilities made optional.
    """
    out = copy.deepcopy(section)
    unneeded: set[str] = set()
    for t in judged:
        if t.rerun is None:
            for u in _rows_of(out, t.capability):
                u["confirmed_by"] = {"dropped": t.capability, "inconclusive": t.verdict.inconclusive}
            continue
        run = t.rerun.profile["run"]
        evidence = {"dropped": t.capability, "exit": run.get("exit_status"), "same_facts": t.verdict.same,
                    "duration": round(t.rerun.seconds, 3)}
        also = sorted(set(t.rerun.dropped) - {t.capability})
        if also:
            evidence["also_dropped"] = also
        if t.rerun.check_status is not None:
            evidence["check_status"] = t.rerun.check_status
        if t.verdict.same:
            unneeded |= set(t.rerun.dropped)
            if t.verdict.ignored:
                evidence["ignored_failures"] = list(t.verdict.ignored)
            for u in out.get("uses", []):
                if u.get("status") == "required" and set(u.get("alternatives") or [u["capability"]]) <= unneeded:
                    u["status"], u["confirmed_by"] = "optional", evidence
        else:
            if t.verdict.inconclusive:
                evidence["inconclusive"] = t.verdict.inconclusive
            else:
                evidence["first_difference"] = t.verdict.difference
            if t.verdict.proof:
                evidence["proof"] = t.verdict.proof
            for u in _rows_of(out, t.capability):
                u["confirmed_by"] = evidence
    out["required"] = [c for c in section.get("required", []) if c not in unneeded]
    out["confirmation"] = {**summary, "optional": sorted(set(section.get("required", [])) - set(out["required"])),
                           "required": [t.capability for t in judged if not t.verdict.same],
                           "inconclusive": [t.capability for t in judged if t.verdict.inconclusive]}
    return out


def restore(reset: str | None) -> None:
    """Run the operator's --reset command: the state the profiled run started from."""
    if reset is None:
        return
    status = subprocess.run(["/bin/sh", "-c", reset], stdin=subprocess.DEVNULL, check=False).returncode
    if status != 0:
        raise ConfirmError(f"--reset {reset!r} exited {status}: re-runs would start from the wrong state")


def rerun(opts: RunOptions, dropped: tuple[str, ...], check: str | None, reset: str | None = None) -> Rerun:
    """Run the workload once more without DROPPED; CHECK runs as its last --exercise."""
    restore(reset)
    exercises = [*opts.exercises, check] if check is not None else opts.exercises
    opts = replace(opts, drop_caps=sorted({*opts.drop_caps, *dropped}), exercises=exercises)
    started = time.monotonic()
    profile = run_session(opts).profile
    if profile["run"]["ended_by"] not in ("exit", "duration"):  # the operator's Ctrl-C or SIGTERM
        raise ConfirmError(f"interrupted ({profile['run']['ended_by']}) during a re-run")
    status = None
    if check is not None:  # null when the target ended before the check could run: a failure
        record = (profile["run"].get("exercises") or [{}])[-1]
        status = record.get("exit") if record.get("exit") is not None else "not run"
    return Rerun(tuple(dropped), profile, status, time.monotonic() - started)


def rerun_options(profile: dict, command: list[str] | None, duration: float | None) -> RunOptions:
    """The base run's options, read back from its profile (command and duration overridable)."""
    run = profile["run"]
    user = run.get("user") or {}
    caps = run.get("caps_at_start") or {}
    env = run.get("environment") or {}
    if not isinstance(caps, dict) or not isinstance(env, dict) or not isinstance(user, dict):
        raise ConfirmError("run.caps_at_start, run.environment and run.user must be objects")
    name = None
    if user.get("as_invoked") is False:
        name = user.get("name") or str(user.get("uid"))
    try:
        argv = command or [os.fsdecode(decode_path(a)) for a in run["command"]]
        environment = {str(k): os.fsdecode(decode_path(v)) for k, v in env.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfirmError(f"run.command or run.environment cannot be read back: {e}") from None
    dropped = caps.get("dropped") or []
    exercises = [e["command"] for e in run.get("exercises") or [] if isinstance(e, dict)
                 and isinstance(e.get("command"), str)]  # the same exercise: reloads, requests
    return RunOptions(command=argv, duration=duration or run.get("requested_duration"), user=name,
                      group=str(user["gid"]) if name and isinstance(user.get("gid"), int) else None,
                      caps="none" if caps.get("set") == "none" else "all",
                      drop_caps=[str(c) for c in dropped] if isinstance(dropped, list) else [],
                      cwd=run.get("cwd") if isinstance(run.get("cwd"), str) else None, env=environment,
                      exercises=exercises)


def confirm(profile: dict, opts: RunOptions, check: str | None = None, say=lambda msg: None,
            reset: str | None = None) -> dict:
    """PROFILE with its doubtful capabilities confirmed by re-runs of OPTS (a new dict); RESET
    runs before each re-run, CHECK during it."""
    section = profile.get("capabilities") or {}
    doubtful = doubtful_capabilities(section)
    if not doubtful:
        say("confirm: every required capability is already proven (or none is required): no re-run")
        return profile
    failure = target_failure(profile["run"])
    if failure:
        raise ConfirmError(f"not confirming: the base run is not a good run ({failure})")
    if opts.duration is None:
        opts = replace(opts, duration=max(ONE_SHOT_LIMIT_MIN, ONE_SHOT_LIMIT_FACTOR * profile["run"]["duration"]))
    started = time.monotonic()
    base = observe(profile)
    control = rerun(opts, (), check, reset)
    seen = observe(control.profile, control.check_status)
    if check is not None and control.check_status != 0:
        raise ConfirmError(f"not confirming: the --check command fails (status {control.check_status}) "
                           "even with every capability")
    if ("exit", _exit_words(profile["run"])) not in seen.facts:
        raise ConfirmError(f"not confirming: the workload does not repeat itself ({_exit_words(profile['run'])}, "
                           f"then {_exit_words(control.profile['run'])} with nothing dropped)")
    checked = {f for f in seen.facts if f[0] == "check"}
    unstable = base.facts ^ (seen.facts - checked)
    reference = Observation(frozenset(base.facts & seen.facts | checked), base.denials | seen.denials,
                            base.failures | seen.failures)
    say(f"confirm: control re-run with every capability ({control.seconds:.1f} s); "
        f"testing {len(doubtful)}: {' '.join(doubtful)}")
    judged: list[Judged] = []
    unneeded: set[str] = set()
    for cap in doubtful:
        group = drop_group(section, cap)
        if not asked(control.profile, group):
            # the first run changed what the workload does (made the directories it chowned...)
            why = (f"the control re-run never asked for {cap}: the earlier runs changed the state the "
                   "workload starts from; --reset CMD restores it")
            judged.append(Judged(cap, None, Verdict(False, None, None, (), why)))
            say(f"confirm: {cap}: not judged, {why} -> stays required")
            continue
        r = rerun(opts, tuple(sorted(unneeded | group)), check, reset)
        verdict = judge(reference, r, group, check is not None)
        if verdict.same:
            unneeded |= group
        judged.append(Judged(cap, r, verdict))
        outcome = ("same behaviour" + (f", carried on after {', '.join(verdict.ignored)}" if verdict.ignored else "")
                   + " -> optional" if verdict.same else
                   f"{verdict.inconclusive or verdict.difference} -> {'stays ' if verdict.inconclusive else ''}required")
        say(f"confirm: without {' '.join(sorted(group))}: {outcome} ({r.seconds:.1f} s)")
    seconds = time.monotonic() - started
    summary = {"reruns": 1 + sum(1 for t in judged if t.rerun is not None), "seconds": round(seconds, 3),
               "check": check, "reset": reset,
               "rerun_duration": opts.duration, "tested": doubtful,
               "compared_facts": len(reference.facts), "unstable_facts": len(unstable)}
    out = dict(profile)
    out["capabilities"] = apply_confirmation(section, judged, summary)
    conf = out["capabilities"]["confirmation"]
    say(f"confirm: {summary['reruns']} re-runs in {seconds:.1f} s; required: {' '.join(conf['required']) or 'none'}; "
        f"optional: {' '.join(conf['optional']) or 'none'}")
    return out

