"""``jellybean apply``, ``status`` and ``delete``: the controller's workflows, through its HTTP API
(:mod:`jellybean.cli.client`). ``--format json`` prints the API's answer as it is; the tables are
:mod:`jellybean.cli.console` blocks."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from jellybean.cli.client import add_client_arguments, call, client_command, controller_endpoint
from jellybean.cli.common import EXIT_NOT_RUNNING, EXIT_OK, UsageError, add_files, local_time
from jellybean.cli.console import Block, Heading, Table, emit

#: The longest ``--wait`` of apply and delete, in seconds (the API's own limit).
MAX_WAIT_S = 600
#: A workflow's message in the table of every workflow is cut to this many characters.
MESSAGE_WIDTH = 100


def _check_wait(wait_s: float) -> None:
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise UsageError(f"--wait must be between 0 and {MAX_WAIT_S} seconds")


def add_apply_arguments(p: argparse.ArgumentParser) -> None:
    add_files(p)
    add_client_arguments(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the changed workflows to run (default: return at once)")


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="one workflow (default: a line for each)")
    add_client_arguments(p)


def add_delete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    add_client_arguments(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for its pipeline to stop")


def cmd_apply(args: argparse.Namespace) -> int:
    from jellybean.spec.loader import MAX_LOAD_BYTES, expand_paths, read_text

    _check_wait(args.wait)
    files = [{"name": str(path), "text": read_text(path)} for path in expand_paths(args.files)]
    total = sum(len(f["text"]) for f in files)
    if total > MAX_LOAD_BYTES:
        raise UsageError(f"the files hold {total} bytes of YAML, more than one apply takes ({MAX_LOAD_BYTES}): "
                         "apply them in parts")

    def run() -> int:
        url, token = controller_endpoint(args)
        query = f"?wait={args.wait:g}" if args.wait > 0 else ""
        result = call(url, token, "POST", "/v1/apply" + query, {"files": files}, timeout=300.0 + args.wait)
        if args.format == "json":
            print(json.dumps(result, indent=2))
        else:
            emit(apply_blocks(result, args.wait))
        return EXIT_NOT_RUNNING if result.get("running") is False else EXIT_OK

    return client_command(run)


def apply_blocks(result: dict[str, Any], wait_s: float) -> list[Block]:
    """What an apply did: each document's and workflow's action, and which did not run in time."""
    out: list[Block] = [f"{doc['kind']} {doc['name']}: {doc['action']}" for doc in result["documents"]]
    for wf in result["workflows"]:
        line = f"workflow {wf['name']}: {wf['action']}, generation {wf['generation']}"
        if wf["action"] != "unchanged":
            cost = "-" if wf.get("cost_per_hour") is None else f"${wf['cost_per_hour']:.3f}/h"
            accuracy = "-" if wf.get("accuracy") is None else f"{wf['accuracy']:.2f}"
            line += f", plan {cost}, accuracy {accuracy} ({wf.get('reason') or 'changed'})"
        out.append(line)
    if not result["changed"]:
        out.append("nothing changed")
    if result.get("running") is False:
        what = "not all running" if result.get("settled") else f"not all running after {wait_s:g} s"
        out.append(f"{what}: see `jellybean status`")
        for wf in result.get("not_running") or []:
            out.append(f"  {wf['name']}: {wf['phase']}" + (f": {wf['message']}" if wf.get("message") else ""))
    return out


def _why(status: dict[str, Any]) -> str:
    """A workflow's message, or else its last failure (kept after it recovered)."""
    if status.get("message"):
        return str(status["message"])
    failure = status.get("last_failure")
    return f"last failure ({local_time(failure.get('at'))}): {failure['message']}" if failure else ""


def workflows_blocks(workflows: list[dict[str, Any]]) -> list[Block]:
    """``status`` without a name: a line for each workflow."""
    if not workflows:
        return ["no workflows (submit some with `jellybean apply -f PATH`)"]
    return [Table(["NAME", "PHASE", "GENERATION", "RUNNING", "$/H", "ACCURACY", "MEASURED", "FRAMES/S", "LOST",
                   "REPLICAS", "APPLIED", "MESSAGE"],
                  [[w["name"], w["phase"], w["generation"], w["running_generation"], w["cost_per_hour"],
                    w["accuracy"], w.get("accuracy_measured"), w.get("throughput_per_s"), w.get("frames_lost"),
                    f"{w['replicas_alive']}/{w['replicas_planned']}", local_time(w["applied_at"]),
                    _why(w)[:MESSAGE_WIDTH]] for w in workflows], right={2, 3, 4, 5, 6, 7, 8, 9})]


def workflow_blocks(status: dict[str, Any]) -> list[Block]:
    """``status NAME``: the phase and why, the plan, each stage planned against running, frames,
    measured accuracy per sink, the endpoints and the events."""
    gen = status.get("generation")
    running = status.get("running_generation")
    out: list[Block] = [Heading(f"Workflow {status['name']}: {status['phase']} (generation "
                                f"{gen if gen is not None else '-'}, running {running if running is not None else '-'})")]
    if status.get("message"):
        out.append(f"  {status['message']}")
    failure = status.get("last_failure")
    if failure:
        out.append(f"Last failure ({failure['reason']}, {local_time(failure.get('at'))}"
                   + (f", attempt {failure['attempts']}" if failure.get("attempts") else "") + f"): {failure['message']}")
    plan = status.get("plan")
    if plan:
        cost = "-" if plan.get("cost_per_hour") is None else f"${plan['cost_per_hour']:.3f}/h"
        accuracy = "-" if plan.get("accuracy") is None else f"{plan['accuracy']:.2f}"
        p90 = "" if plan.get("latency_ms_p90") is None else f", latency p90 {plan['latency_ms_p90']:.1f} ms"
        out.append(f"Plan: {plan.get('strategy')}, {cost}, accuracy {accuracy} "
                   f"(target {plan.get('accuracy_target')}){p90}")
    out.append("")
    out.append(Table(
        ["STAGE", "SITE", "VARIANT", "RUNNING", "REPLICAS ALIVE/PLANNED", "PLANNED REQ/S", "MEASURED REQ/S"],
        [[r["stage"], r["site"], r["variant"], r.get("variant_running"),
          f"{r['replicas_alive']}/{r['replicas_planned']}", r["rate_planned_per_s"], r.get("rate_measured_per_s")]
         for r in status.get("stages", [])], right={4, 5, 6}))
    out += _frames_blocks(status)
    endpoints = status.get("endpoints") or []
    if endpoints:
        out += ["", Table(["ENDPOINT", "NAME", "SITE", "WHERE"],
                          [[e["kind"], e["name"], e["site"], e.get("url") or e.get("path") or "-"] for e in endpoints])]
    events = status.get("events") or []
    if events:
        out += ["", Heading("Events")]
        for event in events:
            detail = event.get("detail") or {}
            words = ", ".join(f"{k} {detail[k]}" for k in ("generation", "reason", "message") if detail.get(k))
            out.append(f"  {local_time(event.get('at'))}  {event['event']}" + (f"  {words}" if words else ""))
    return out


def _frames_blocks(status: dict[str, Any]) -> list[Block]:
    """Frames sent, completed, failed, in flight and lost; throughput and accuracy measured; each
    sink's, when there are several."""
    frames = status.get("frames")
    if not frames:
        return []
    out: list[Block] = ["", f"Frames: sent {frames.get('sent', 0)}, completed {frames.get('completed', 0)}, "
                        f"failed {frames.get('failed', 0)}, in flight {frames.get('in_flight', 0)}, "
                        f"lost {frames.get('lost', 0)}"]
    measured = []
    if status.get("throughput_per_s") is not None:
        measured.append(f"{status['throughput_per_s']:.1f} frames/s")
    if status.get("accuracy_measured") is not None:
        measured.append(f"accuracy {status['accuracy_measured']:.2f}")
    if measured:
        out.append("Measured: " + ", ".join(measured))
    sinks = status.get("sinks") or []
    if len(sinks) > 1:
        out.append(Table(["SINK", "COMPLETED", "FAILED", "ACCURACY", "PREDICTED", "TARGET"],
                         [[s["sink"], s["frames"]["completed"], s["frames"]["failed"], s.get("accuracy_measured"),
                           s.get("accuracy_predicted"), s.get("accuracy_target")] for s in sinks],
                         right={1, 2, 3, 4, 5}))
    return out


def cmd_status(args: argparse.Namespace) -> int:
    def run() -> int:
        url, token = controller_endpoint(args)
        if args.name:
            status = call(url, token, "GET", f"/v1/workflows/{quote(args.name, safe='')}")
            if args.format == "json":
                print(json.dumps(status, indent=2))
            else:
                emit(workflow_blocks(status))
            return EXIT_OK
        workflows = call(url, token, "GET", "/v1/workflows")
        if args.format == "json":
            print(json.dumps(workflows, indent=2))
        else:
            emit(workflows_blocks(workflows))
        return EXIT_OK

    return client_command(run)


def cmd_delete(args: argparse.Namespace) -> int:
    _check_wait(args.wait)

    def run() -> int:
        url, token = controller_endpoint(args)
        query = f"?wait={args.wait:g}" if args.wait > 0 else ""
        result = call(url, token, "DELETE", f"/v1/workflows/{quote(args.name, safe='')}{query}",
                      timeout=60.0 + args.wait)
        if args.format == "json":
            print(json.dumps(result, indent=2))
        else:
            stopped = {True: ", pipeline stopped", False: f", still stopping after {args.wait:g} s"}.get(
                result.get("settled"), "")
            print(f"workflow {result['name']}: deleted{stopped}")
        return EXIT_OK

    return client_command(run)
