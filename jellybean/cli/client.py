"""The CLI's client of the controller's HTTP API (``jellybean up`` serves it): where the controller
is and its token (:func:`controller_endpoint`), one call (:func:`call`), and the options every
client command takes (:func:`add_controller_arguments`).

Plain urllib, no proxy and no redirects (the request carries the bearer token). The API's errors
come back in the controller's words: a 422 with issues as :class:`~jellybean.spec.errors.SpecError`
(exit 2, like the same mistake in a local file), anything else as :class:`ControllerError` (exit 1,
one line, see :func:`client_command`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import IO, Any

from jellybean.cli.common import EXIT_INFEASIBLE, UsageError

#: How long one API call may take unless the command says otherwise (a plan can take a minute).
DEFAULT_TIMEOUT_S = 120.0


class ControllerError(Exception):
    """The controller is unreachable or refused the request: printed as one line, exit 1."""


def add_controller_arguments(p: argparse.ArgumentParser, state_dir_help: str) -> None:
    """``--controller URL`` and ``--state-dir DIR``: where the controller is, and where its URL and
    tokens were recorded (``state_dir_help`` says which token the command reads)."""
    p.add_argument("--controller", metavar="URL",
                   help="the controller's URL (default: the one `jellybean up` recorded in the state directory)")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help=state_dir_help)


def add_client_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``apply``, ``status`` and ``delete``: the controller, and ``--format``."""
    add_controller_arguments(p, "where `jellybean up` wrote controller.json and the token "
                             "(default $JELLYBEAN_HOME or ~/.jellybean; JELLYBEAN_TOKEN overrides the token)")
    p.add_argument("--format", default="table", choices=["table", "json"])


def state_dir_of(args: argparse.Namespace) -> Path:
    """``--state-dir``, else the default state directory."""
    from jellybean.runtime.state import default_state_dir

    return Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()


def controller_endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The controller's URL and the API token, from the options, JELLYBEAN_TOKEN or the state directory."""
    from jellybean.runtime.state import CONTROLLER_NAME, TOKEN_NAME, read_controller_info, read_token

    state_dir = state_dir_of(args)
    url = args.controller
    if url is None:
        info = read_controller_info(state_dir) or {}
        url = info.get("url")
        if not isinstance(url, str):
            raise ControllerError(f"no controller recorded in {state_dir / CONTROLLER_NAME}: start one with "
                                  "`jellybean up` (or pass --controller URL)")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--controller must be an http:// or https:// URL, not {url!r}")
    token = os.environ.get("JELLYBEAN_TOKEN") or read_token(state_dir)
    if not token:
        raise ControllerError(f"no API token in {state_dir / TOKEN_NAME}: point --state-dir at the controller's "
                              "state directory or set JELLYBEAN_TOKEN")
    return url.rstrip("/"), token


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follows a redirect: the request carries the bearer token, which must not go elsewhere."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Message, newurl: str) -> urllib.request.Request | None:
        return None


def call(url: str, token: str, method: str, path: str, body: dict | None = None, *,
         timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """One API call; the decoded JSON answer (an object, or a list for ``GET /v1/workflows``).
    API errors become exceptions with the controller's words: SpecError (422, exit 2) or
    ControllerError (exit 1). ``timeout`` is in seconds."""
    import urllib.error

    from jellybean.spec.errors import Issue, SpecError

    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    if not url.startswith(("http://", "https://")):  # never file: or another scheme urllib would open
        raise UsageError(f"the controller's URL must be http:// or https://, not {url!r}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json",
        **({"Content-Type": "application/json"} if data is not None else {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read().decode("utf-8"))
        except (ValueError, OSError):
            error = {}
        if not isinstance(error, dict):
            error = {}
        message = error.get("error") or f"HTTP {exc.code} {exc.reason}"
        if exc.code == 422 and error.get("issues"):
            raise SpecError([Issue(i.get("file", "<request>"), i.get("line"), i.get("path", ""), i.get("message", ""),
                                   i.get("hint", "")) for i in error["issues"]]) from None
        if exc.code == 409 and error.get("rejections"):
            lines = [message]
            for rejection in error["rejections"]:
                for reason in rejection.get("explanation") or []:
                    lines.append(f"  {rejection.get('workflow')} ({rejection.get('reason')}): {reason}")
            raise ControllerError("\n".join(lines)) from None
        if exc.code == 401:
            raise ControllerError(f"the controller at {url} refused the token: {message}") from None
        raise ControllerError(message) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ControllerError(f"no controller at {url}: start one with `jellybean up` ({reason})") from None
    except ValueError:
        raise ControllerError(f"the service at {url} did not answer as a Jellybean controller") from None


def client_command(run: Callable[[], int]) -> int:
    """Run a client command's body: a :class:`ControllerError` is one line on stderr and exit 1."""
    try:
        return run()
    except ControllerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE
