"""``proxyproto-mw aws enable | disable | status``: turn the PROXY header on at AWS.

Classic ELB (``--load-balancer NAME --instance-port N ...``): the header is sent to an
instance port that carries a policy of type ``ProxyProtocolPolicyType`` (attribute
``ProxyProtocol=true``). ``enable`` creates that policy on the load balancer if it is
missing and adds it to each instance port while keeping every policy already there
(``SetLoadBalancerPoliciesForBackendServer`` replaces the port's whole list), then reads the
result back. ``disable`` removes only our policy from each port and deletes it once no port
uses it. NLB (``--target-group ARN``): the target group attribute
``proxy_protocol_v2.enabled``.

boto3 is an optional extra (``pip install 'proxyproto-mw[aws]'``); credentials, region and
endpoint come from the usual AWS sources (environment, ``~/.aws``, instance role). With
``--dry-run`` nothing is called and boto3 is not needed: the equivalent AWS CLI commands are
printed. Exit status: 0 done (``status``: on everywhere asked), 1 an AWS error or a result
that did not verify, 2 usage error, 3 (``status`` only) off on some port or target group.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

__all__ = [
    "DEFAULT_POLICY_NAME",
    "NLB_ATTRIBUTE",
    "POLICY_TYPE",
    "AwsError",
    "ClassicTarget",
    "aws_group",
]

POLICY_TYPE = "ProxyProtocolPolicyType"
DEFAULT_POLICY_NAME = "proxyproto-mw-ProxyProtocol"
NLB_ATTRIBUTE = "proxy_protocol_v2.enabled"

FAILED = 1
OFF = 3

_T = TypeVar("_T")


class AwsError(click.ClickException):
    """An AWS call failed, or its result did not verify (exit status 1)."""

    exit_code = FAILED


@dataclass(frozen=True)
class ClassicTarget:
    """A Classic ELB, the instance ports to act on, and the name of our policy."""

    load_balancer: str
    instance_ports: tuple[int, ...]
    policy_name: str


def _cli(region: str | None, *words: str) -> str:
    """An AWS CLI command line, quoted for a POSIX shell."""
    return shlex.join(["aws", *words, *(["--region", region] if region else [])])


# --- the AWS SDK, imported only when something is really called ---------------------------


class _Session:
    """boto3 clients and botocore's exceptions, with AWS failures turned into one-line errors."""

    def __init__(self, region: str | None) -> None:
        try:
            boto3 = importlib.import_module("boto3")
            self.exceptions = importlib.import_module("botocore.exceptions")
        except ImportError:
            raise click.ClickException(
                "the aws commands need boto3: pip install 'proxyproto-mw[aws]'"
            ) from None
        try:
            self.session = boto3.session.Session(region_name=region)
        except self.exceptions.BotoCoreError as error:
            raise AwsError(f"AWS configuration: {error}") from None
        self.clients: dict[str, Any] = {}

    def call(self, service: str, operation: str, **parameters: Any) -> Any:
        """``client(service).operation(**parameters)``; an AWS failure is an :class:`AwsError`."""
        errors = self.exceptions
        try:
            client = self.clients.get(service)
            if client is None:
                client = self.clients[service] = self.session.client(service)
            return getattr(client, operation)(**parameters)
        except errors.NoRegionError:
            raise AwsError(
                "no AWS region: pass --region, set AWS_DEFAULT_REGION or run 'aws configure'"
            ) from None
        except (errors.NoCredentialsError, errors.PartialCredentialsError):
            raise AwsError(
                "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or run 'aws configure'"
            ) from None
        except errors.ClientError as error:
            details = error.response.get("Error", {})
            code, message = details.get("Code", "?"), details.get("Message", "")
            name = parameters.get("LoadBalancerName") or next(
                iter(parameters.get("LoadBalancerNames", ())), None
            )
            if code in ("LoadBalancerNotFound", "AccessPointNotFound") and name:
                region = self.session.region_name
                raise AwsError(f"no Classic ELB named {name} in {region} ({message})") from None
            if code == "TargetGroupNotFound":
                raise AwsError(
                    f"no target group {parameters.get('TargetGroupArn')} ({message})"
                ) from None
            raise AwsError(f"{service} {operation}: {code}: {message}") from None
        except errors.BotoCoreError as error:
            raise AwsError(f"{service} {operation}: {error}") from None


# --- Classic ELB --------------------------------------------------------------------------------


def _describe(session: _Session, name: str) -> dict[str, Any]:
    answer = session.call("elb", "describe_load_balancers", LoadBalancerNames=[name])
    descriptions: list[dict[str, Any]] = answer.get("LoadBalancerDescriptions", [])
    if not descriptions:
        raise AwsError(f"no Classic ELB named {name}")
    return descriptions[0]


def _port_policies(description: dict[str, Any]) -> dict[int, list[str]]:
    """Each instance port's policies, as ``BackendServerDescriptions`` lists them."""
    return {
        int(backend["InstancePort"]): list(backend.get("PolicyNames", []))
        for backend in description.get("BackendServerDescriptions", [])
    }


def _listener_ports(description: dict[str, Any]) -> list[int]:
    return sorted(
        {int(entry["Listener"]["InstancePort"]) for entry in description["ListenerDescriptions"]}
    )


def _proxy_policies(session: _Session, name: str) -> dict[str, str]:
    """The load balancer's policies by name: their type, or ``"ProxyProtocol"`` for the ones
    that send the header (``ProxyProtocolPolicyType`` with ``ProxyProtocol=true``)."""
    answer = session.call("elb", "describe_load_balancer_policies", LoadBalancerName=name)
    kinds = {}
    for policy in answer.get("PolicyDescriptions", []):
        kind = policy.get("PolicyTypeName", "")
        attributes = {
            attribute.get("AttributeName"): str(attribute.get("AttributeValue", "")).lower()
            for attribute in policy.get("PolicyAttributeDescriptions", [])
        }
        if kind == POLICY_TYPE and attributes.get("ProxyProtocol") == "true":
            kind = "ProxyProtocol"
        kinds[policy["PolicyName"]] = kind
    return kinds


def _check_ports(description: dict[str, Any], target: ClassicTarget) -> None:
    forwarded = _listener_ports(description)
    missing = [port for port in target.instance_ports if port not in forwarded]
    if missing:
        raise AwsError(
            f"{target.load_balancer} has no listener forwarding to instance port "
            f"{', '.join(map(str, missing))} (its listeners forward to "
            f"{', '.join(map(str, forwarded)) or 'no port'})"
        )


def _names(policies: Sequence[str]) -> str:
    return ", ".join(policies) or "(none)"


def _set_policies(session: _Session, target: ClassicTarget, port: int, policies: list[str]) -> None:
    session.call(
        "elb",
        "set_load_balancer_policies_for_backend_server",
        LoadBalancerName=target.load_balancer,
        InstancePort=port,
        PolicyNames=policies,
    )


def _classic_enable(session: _Session, target: ClassicTarget) -> None:
    name, ours = target.load_balancer, target.policy_name
    description = _describe(session, name)
    _check_ports(description, target)
    kinds = _proxy_policies(session, name)
    if ours not in kinds:
        session.call(
            "elb",
            "create_load_balancer_policy",
            LoadBalancerName=name,
            PolicyName=ours,
            PolicyTypeName=POLICY_TYPE,
            PolicyAttributes=[{"AttributeName": "ProxyProtocol", "AttributeValue": "true"}],
        )
        click.echo(f"created policy {ours} ({POLICY_TYPE}, ProxyProtocol=true) on {name}")
    elif kinds[ours] != "ProxyProtocol":
        raise AwsError(
            f"{name} already has a policy named {ours} of type {kinds[ours]} that does not "
            f"turn the PROXY protocol on; choose another --policy-name"
        )
    before = _port_policies(description)
    for port in target.instance_ports:
        current = before.get(port, [])
        if ours in current:
            click.echo(f"instance port {port}: already on; policies: {_names(current)}")
            continue
        _set_policies(session, target, port, [*current, ours])
        click.echo(f"instance port {port}: policies {_names([*current, ours])}")
    after = _port_policies(_describe(session, name))
    for port in target.instance_ports:
        kept = [policy for policy in before.get(port, []) if policy not in after.get(port, [])]
        if ours not in after.get(port, []) or kept:
            raise AwsError(
                f"instance port {port} of {name} did not verify: it has "
                f"{_names(after.get(port, []))}, expected {ours} and "
                f"{_names(before.get(port, []))}"
            )
    ports = ", ".join(map(str, target.instance_ports))
    click.echo(f"verified: {name} sends a PROXY v1 header to instance port {ports}")


def _classic_disable(session: _Session, target: ClassicTarget) -> None:
    name, ours = target.load_balancer, target.policy_name
    description = _describe(session, name)
    before = _port_policies(description)
    for port in target.instance_ports:
        current = before.get(port, [])
        if ours not in current:
            click.echo(f"instance port {port}: {ours} is not there; policies: {_names(current)}")
            continue
        remaining = [policy for policy in current if policy != ours]
        _set_policies(session, target, port, remaining)
        click.echo(f"instance port {port}: policies {_names(remaining)}")
    after = _port_policies(_describe(session, name))
    for port in target.instance_ports:
        expected = [policy for policy in before.get(port, []) if policy != ours]
        if sorted(after.get(port, [])) != sorted(expected):
            raise AwsError(
                f"instance port {port} of {name} did not verify: it has "
                f"{_names(after.get(port, []))}, expected {_names(expected)}"
            )
    kinds = _proxy_policies(session, name)
    if ours in kinds and not any(ours in policies for policies in after.values()):
        session.call("elb", "delete_load_balancer_policy", LoadBalancerName=name, PolicyName=ours)
        click.echo(f"deleted policy {ours}: no instance port uses it any more")
    still = {
        port: [policy for policy in after.get(port, []) if kinds.get(policy) == "ProxyProtocol"]
        for port in target.instance_ports
    }
    others = {port: policies for port, policies in still.items() if policies}
    if others:
        raise AwsError(
            "still sending the PROXY header through policies that are not "
            f"{ours}: "
            + "; ".join(f"port {port}: {_names(names)}" for port, names in others.items())
            + " (disable them with --policy-name)"
        )
    ports = ", ".join(map(str, target.instance_ports))
    click.echo(f"verified: {name} sends no PROXY header to instance port {ports}")


def _classic_status(session: _Session, target: ClassicTarget) -> bool:
    name = target.load_balancer
    description = _describe(session, name)
    policies = _port_policies(description)
    kinds = _proxy_policies(session, name)
    ports = target.instance_ports or tuple(sorted({*_listener_ports(description), *policies}))
    everywhere = bool(ports)
    click.echo(f"Classic ELB {name}")
    for port in ports:
        on = [policy for policy in policies.get(port, []) if kinds.get(policy) == "ProxyProtocol"]
        state = f"on ({_names(on)})" if on else "off"
        everywhere = everywhere and bool(on)
        click.echo(
            f"  instance port {port}: PROXY protocol {state}; "
            f"policies: {_names(policies.get(port, []))}"
        )
    return everywhere


def _classic_dry_run(command: str, target: ClassicTarget, region: str | None) -> list[str]:
    name, ours = target.load_balancer, target.policy_name
    lines = [
        "# The policies already on each instance port:",
        _cli(region, "elb", "describe-load-balancers", "--load-balancer-names", name,
             "--query", "LoadBalancerDescriptions[0].BackendServerDescriptions"),
    ]  # fmt: skip
    if command == "enable":
        lines += [
            "# Create the policy (skip if describe-load-balancer-policies lists it already):",
            _cli(region, "elb", "create-load-balancer-policy", "--load-balancer-name", name,
                 "--policy-name", ours, "--policy-type-name", POLICY_TYPE,
                 "--policy-attributes", "AttributeName=ProxyProtocol,AttributeValue=true"),
        ]  # fmt: skip
    for port in target.instance_ports:
        if command == "enable":
            lines.append(
                f"# It replaces every policy on port {port}: add the names the first command "
                "listed for it."
            )
            names = [ours]
        else:
            lines.append(
                f"# It replaces every policy on port {port}: name the ones the first command "
                f"listed for it, except {ours}."
            )
            names = ["[]"]
        lines.append(
            _cli(region, "elb", "set-load-balancer-policies-for-backend-server",
                 "--load-balancer-name", name, "--instance-port", str(port),
                 "--policy-names", *names)
        )  # fmt: skip
    if command == "disable":
        lines += [
            "# Once no instance port uses it:",
            _cli(region, "elb", "delete-load-balancer-policy", "--load-balancer-name", name,
                 "--policy-name", ours),
        ]  # fmt: skip
    lines += [
        "# Verify:",
        _cli(region, "elb", "describe-load-balancers", "--load-balancer-names", name,
             "--query", "LoadBalancerDescriptions[0].BackendServerDescriptions"),
    ]  # fmt: skip
    return lines


# --- NLB target group ---------------------------------------------------------------------------


def _nlb_state(session: _Session, arn: str) -> bool | None:
    answer = session.call("elbv2", "describe_target_group_attributes", TargetGroupArn=arn)
    for attribute in answer.get("Attributes", []):
        if attribute.get("Key") == NLB_ATTRIBUTE:
            return str(attribute.get("Value", "")).lower() == "true"
    return None


def _nlb_set(session: _Session, arn: str, enabled: bool) -> None:
    value = "true" if enabled else "false"
    session.call(
        "elbv2",
        "modify_target_group_attributes",
        TargetGroupArn=arn,
        Attributes=[{"Key": NLB_ATTRIBUTE, "Value": value}],
    )
    if _nlb_state(session, arn) is not enabled:
        raise AwsError(f"target group {arn} did not verify: {NLB_ATTRIBUTE} is not {value}")
    click.echo(f"verified: target group {arn} has {NLB_ATTRIBUTE}={value}")


def _nlb_dry_run(command: str, arn: str, region: str | None) -> list[str]:
    lines = []
    if command != "status":
        value = "true" if command == "enable" else "false"
        lines.append(
            _cli(region, "elbv2", "modify-target-group-attributes", "--target-group-arn", arn,
                 "--attributes", f"Key={NLB_ATTRIBUTE},Value={value}")
        )  # fmt: skip
    lines.append(
        _cli(region, "elbv2", "describe-target-group-attributes", "--target-group-arn", arn)
    )  # fmt: skip
    return lines


# --- the commands -------------------------------------------------------------------------------


def _run(
    command: str,
    *,
    load_balancer: str | None,
    target_group: str | None,
    instance_ports: tuple[int, ...],
    policy_name: str,
    region: str | None,
    dry_run: bool,
) -> None:
    if (load_balancer is None) == (target_group is None):
        raise click.UsageError("give either --load-balancer NAME or --target-group ARN")
    if target_group is not None and instance_ports:
        raise click.UsageError("--instance-port is for a Classic ELB (--load-balancer)")
    if load_balancer is not None and command != "status" and not instance_ports:
        raise click.UsageError(f"{command} needs --instance-port N (repeat it for several)")
    if dry_run:
        if load_balancer is not None:
            target = ClassicTarget(load_balancer, instance_ports, policy_name)
            lines = _classic_dry_run(command, target, region)
        else:
            assert target_group is not None
            lines = _nlb_dry_run(command, target_group, region)
        click.echo("\n".join(lines))
        return
    session = _Session(region)
    if target_group is not None:
        if command == "status":
            state = _nlb_state(session, target_group)
            word = "on" if state else "off"
            click.echo(f"NLB target group {target_group}: PROXY protocol v2 {word}")
            if not state:
                sys.exit(OFF)
        else:
            _nlb_set(session, target_group, command == "enable")
        return
    assert load_balancer is not None
    target = ClassicTarget(load_balancer, tuple(dict.fromkeys(instance_ports)), policy_name)
    if command == "enable":
        _classic_enable(session, target)
    elif command == "disable":
        _classic_disable(session, target)
    elif not _classic_status(session, target):
        sys.exit(OFF)


def _options(function: Callable[..., _T]) -> Callable[..., _T]:
    for option in reversed(
        [
            click.option("--load-balancer", help="A Classic ELB's name."),
            click.option("--target-group", help="An NLB target group's ARN."),
            click.option(
                "--instance-port",
                "instance_ports",
                type=click.IntRange(1, 65535),
                multiple=True,
                help="Classic ELB: an instance port (repeatable). status: every port if none.",
            ),
            click.option(
                "--policy-name",
                default=DEFAULT_POLICY_NAME,
                show_default=True,
                help="Classic ELB: the name of our ProxyProtocolPolicyType policy.",
            ),
            click.option("--region", help="AWS region. [default: from the AWS configuration]"),
            click.option(
                "--dry-run",
                is_flag=True,
                help="Print the equivalent AWS CLI commands instead of calling AWS.",
            ),
        ]
    ):
        function = option(function)
    return function


def _command(name: str, short: str, summary: str) -> click.Command:
    def callback(**options: Any) -> None:
        _run(name, **options)

    return click.command(name, help=summary, short_help=short)(_options(callback))


aws_group = click.Group(
    "aws",
    short_help="Turn the PROXY protocol on or off at AWS (Classic ELB, NLB), or show it.",
    help=(
        "Turn the PROXY protocol on or off at AWS, or show it: a Classic ELB's instance "
        "ports (--load-balancer, --instance-port) or an NLB target group (--target-group). "
        "Needs boto3 (pip install 'proxyproto-mw[aws]') unless --dry-run; credentials and "
        "region come from the usual AWS sources. Exit status: 0 done (status: on), 1 AWS "
        "error or unverified result, 2 usage error, 3 status: off."
    ),
    commands=[
        _command(
            "enable",
            "Turn the PROXY header on (Classic ELB ports, NLB target group).",
            "Classic ELB: create the ProxyProtocolPolicyType policy if missing and add it to "
            "each --instance-port, keeping the policies already there; NLB: set "
            "proxy_protocol_v2.enabled=true. Then read the result back.",
        ),
        _command(
            "disable",
            "Turn it off, removing only our policy.",
            "Classic ELB: remove our policy from each --instance-port (keeping every other) "
            "and delete it once unused; NLB: set proxy_protocol_v2.enabled=false.",
        ),
        _command(
            "status",
            "Show whether it is on; exit 3 when off.",
            "Show whether each instance port (every one if none is given) or the target "
            "group receives PROXY headers; exit 3 when one does not.",
        ),
    ],
)
