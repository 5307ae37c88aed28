"""`swarm preemption-watch`: drain this node when its cloud says the VM is about to be taken back.

Theory of operation: preemptible (GCE) and spot (AWS) VMs get a short notice before they are
stopped: about 30 s on GCE, 2 minutes on AWS. The notice is read from the VM's metadata service,
which only the VM itself can reach: GCE's `instance/preempted` says TRUE once the VM is being
preempted; AWS's `spot/instance-action` answers 404 until a stop is planned, then the action
and its time (IMDSv2: a session token is asked for first, and IMDSv1 used if that fails). The
watcher polls every `--interval` seconds; when the notice comes it drains the local node with a
grace a little shorter than the notice (what still runs then is interrupted, and other nodes
run it again), waits for the daemon to leave the swarm, and exits. A metadata service that
cannot be reached is retried (said once): a watcher started before the network is up must not
die of it. `--metadata-url` points it elsewhere, for tests.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from swarm import statedir
from swarm.cli.common import _call, err, out
from swarm.errors import UserInputError

METADATA_TIMEOUT_S = 2.0  # one request to the metadata service
REFUSED_SAID_EVERY_S = 60.0
# The metadata service is reached directly, never through a proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Cloud:
    url: str  # where the notice is read
    grace_s: float  # the drain's grace: a little less than the notice the cloud gives


CLOUDS = {
    # The metadata server's address, not its name: no DNS lookup (unbounded) stands in the way.
    "gce": Cloud("http://169.254.169.254/computeMetadata/v1/instance/preempted", 15.0),
    "aws": Cloud("http://169.254.169.254/latest/meta-data/spot/instance-action", 100.0),
}
AWS_TOKEN_PATH = "/latest/api/token"


def notice(cloud: str, url: str) -> str | None:
    """The preemption notice, if the metadata service gives one now ("": none yet). None if the
    service could not be asked. Blocking, bounded by METADATA_TIMEOUT_S per request."""
    try:
        if cloud == "gce":
            request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
            with _OPENER.open(request, timeout=METADATA_TIMEOUT_S) as reply:
                body = reply.read(64).decode("ascii", "replace").strip()
            return "the VM is being preempted" if body.upper() == "TRUE" else ""
        headers = {}
        token = _aws_token(url)
        if token:
            headers["X-aws-ec2-metadata-token"] = token
        request = urllib.request.Request(url, headers=headers)
        with _OPENER.open(request, timeout=METADATA_TIMEOUT_S) as reply:
            action = json.loads(reply.read(4096) or b"{}")
        return f"spot {action.get('action', 'stop')} at {action.get('time', 'soon')}"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return ""  # AWS: 404 until a stop is planned
        raise Refused(
            f"HTTP {exc.code} from {url}" + (AWS_REFUSED if cloud == "aws" else "")
        ) from exc
    except (OSError, ValueError, AttributeError):
        return None


class Refused(Exception):
    """The metadata service answers, but will not tell: the watcher is blind until it does."""


AWS_REFUSED = (
    " (an instance that requires IMDSv2 refuses a request without a session token: is the"
    " token request blocked, say by its hop limit in a container?)"
)


def _aws_token(url: str) -> str:
    """An IMDSv2 session token ("" if the service gives none: IMDSv1 then)."""
    base = url.split("/latest/", 1)[0]
    request = urllib.request.Request(
        base + AWS_TOKEN_PATH,
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
    )
    try:
        with _OPENER.open(request, timeout=METADATA_TIMEOUT_S) as reply:
            return str(reply.read(512).decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return ""


def cmd_preemption_watch(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise UserInputError(
            f"--interval must be a number of seconds above 0, got {args.interval:g}"
        )
    cloud = CLOUDS[args.cloud]
    url = args.metadata_url or cloud.url
    grace = cloud.grace_s if args.grace is None else args.grace
    out.print(f"watching {url} for a preemption notice every {args.interval:g}s")
    said_unreachable = False
    said_refused_at = -REFUSED_SAID_EVERY_S
    while True:
        try:
            said = notice(args.cloud, url)
        except Refused as exc:  # said again every minute: a watcher that cannot see is no watcher
            if time.monotonic() - said_refused_at >= REFUSED_SAID_EVERY_S:
                err.print(f"swarm: the metadata service refuses: {exc}", markup=False)
                said_refused_at = time.monotonic()
            said = None
        if said:
            break
        if said is None and not said_unreachable:
            err.print(f"the metadata service at {url} does not answer; still trying")
            said_unreachable = True
        time.sleep(args.interval)
    out.print(f"preemption notice: {said}; draining this node (grace {grace:g}s)")
    reply = _call(args, lambda client: client.drain(None, grace))
    out.print(f"draining node {reply['node'][:8]}: {reply['running'] or 0} attempt(s) to end")
    state = statedir.resolve(args.data_dir)
    while statedir.lock_held(state):  # the daemon exits once drained
        time.sleep(0.2)
    out.print("drained: the daemon has left the swarm and stopped")
    return 0
