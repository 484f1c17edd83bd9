"""``proxyproto-mw aws`` against moto's server mode on loopback, never a real account.

moto runs as ``python -m moto.server -H 127.0.0.1 -p PORT``, a real HTTP endpoint speaking
the AWS API; the command runs as a subprocess with ``AWS_ENDPOINT_URL`` pointing there,
test credentials, and the instance metadata service switched off (so that no request ever
leaves loopback). The tests build load balancers with boto3 and check with boto3 what the
command left behind.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.haproxy import ServerProcess, free_port
from tests.servers import REPOSITORY, clean_environment

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")
# botocore reads AWS_ENDPOINT_URL from 1.31 (boto3 1.28) on; an older one would send the
# command's requests to AWS itself instead of to moto.
botocore = pytest.importorskip("botocore")
if tuple(int(part) for part in botocore.__version__.split(".")[:2]) < (1, 31):
    pytest.skip("botocore < 1.31 ignores AWS_ENDPOINT_URL", allow_module_level=True)

COMMAND = [sys.executable, "-m", "proxyproto_mw.cli", "aws"]
WITHOUT_BOTO3 = [
    sys.executable,
    "-c",
    "import sys; sys.modules['boto3'] = None; from proxyproto_mw.cli import main; main()",
    "aws",
]
OURS = "proxyproto-mw-ProxyProtocol"
REGION = "us-east-1"


def aws_environment(endpoint: str | None, **extra: str) -> dict[str, str]:
    """The environment without the caller's AWS settings, with test credentials and region,
    the endpoint when given, and no instance metadata look-up."""
    env = {
        name: value for name, value in clean_environment().items() if not name.startswith("AWS_")
    }
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(REPOSITORY / "tests" / "no-such-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(REPOSITORY / "tests" / "no-such-aws-credentials"),
        NO_PROXY="127.0.0.1,localhost",
    )
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    env.update(extra)
    return env


def run(
    arguments: list[str], env: Mapping[str, str], command: list[str] = COMMAND
) -> subprocess.CompletedProcess[str]:
    """``proxyproto-mw aws ARGUMENTS`` to its exit."""
    return subprocess.run(
        [*command, *arguments],
        cwd=REPOSITORY,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Moto:
    """The moto server's endpoint and boto3 clients on it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.env = aws_environment(endpoint)
        options = {
            "endpoint_url": endpoint,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        self.elb: Any = boto3.client("elb", **options)
        self.elbv2: Any = boto3.client("elbv2", **options)
        self.ec2: Any = boto3.client("ec2", **options)

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return run(list(arguments), self.env)

    def classic_elb(self, existing: Mapping[int, list[tuple[str, str, str, str]]]) -> str:
        """A new Classic ELB with TCP listeners to instance ports 80 and 443, and
        ``existing`` policies (name, type, attribute, value) on instance ports: its name."""
        name = f"web-{uuid.uuid4().hex[:8]}"
        self.elb.create_load_balancer(
            LoadBalancerName=name,
            Listeners=[
                {"Protocol": "TCP", "LoadBalancerPort": port, "InstancePort": port}
                for port in (80, 443)
            ],
            AvailabilityZones=[f"{REGION}a"],
        )
        for port, policies in existing.items():
            for policy, kind, attribute, value in policies:
                self.elb.create_load_balancer_policy(
                    LoadBalancerName=name,
                    PolicyName=policy,
                    PolicyTypeName=kind,
                    PolicyAttributes=[{"AttributeName": attribute, "AttributeValue": value}],
                )
            self.elb.set_load_balancer_policies_for_backend_server(
                LoadBalancerName=name,
                InstancePort=port,
                PolicyNames=[policy[0] for policy in policies],
            )
        return name

    def port_policies(self, name: str) -> dict[int, list[str]]:
        """Each instance port's policies, as describe-load-balancers says."""
        (description,) = self.elb.describe_load_balancers(LoadBalancerNames=[name])[
            "LoadBalancerDescriptions"
        ]
        return {
            backend["InstancePort"]: backend["PolicyNames"]
            for backend in description.get("BackendServerDescriptions", [])
            if backend["PolicyNames"]
        }

    def policies(self, name: str) -> dict[str, dict[str, Any]]:
        """The load balancer's policies by name."""
        answer = self.elb.describe_load_balancer_policies(LoadBalancerName=name)
        return {policy["PolicyName"]: policy for policy in answer["PolicyDescriptions"]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto's server on a free loopback port for this module's tests."""
    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with ServerProcess(
        argv,
        workdir,
        [("127.0.0.1", port)],
        name="moto",
        start_timeout=30,
        env=aws_environment(None),
    ):
        yield Moto(f"http://127.0.0.1:{port}")


KEEP = ("keep-me", "BackendServerAuthenticationPolicyType", "PublicKeyPolicyName", "my-key")


def test_classic_enable_keeps_other_policies_and_disable_removes_only_ours(moto: Moto) -> None:
    name = moto.classic_elb({80: [KEEP]})
    off = moto.run("status", "--load-balancer", name)
    assert off.returncode == 3, off
    assert "  instance port 80: PROXY protocol off; policies: keep-me\n" in off.stdout

    enabled = moto.run("enable", "--load-balancer", name, "--instance-port", "80",
                       "--instance-port", "443")  # fmt: skip
    assert enabled.returncode == 0, enabled.stderr
    assert moto.port_policies(name) == {80: ["keep-me", OURS], 443: [OURS]}
    policy = moto.policies(name)[OURS]
    assert policy["PolicyTypeName"] == "ProxyProtocolPolicyType"
    assert policy["PolicyAttributeDescriptions"] == [
        {"AttributeName": "ProxyProtocol", "AttributeValue": "true"}
    ]
    assert enabled.stdout.endswith(
        f"verified: {name} sends a PROXY v1 header to instance port 80, 443\n"
    )

    on = moto.run("status", "--load-balancer", name)
    assert on.returncode == 0, on
    assert on.stdout == (
        f"Classic ELB {name}\n"
        f"  instance port 80: PROXY protocol on ({OURS}); policies: keep-me, {OURS}\n"
        f"  instance port 443: PROXY protocol on ({OURS}); policies: {OURS}\n"
    )

    again = moto.run("enable", "--load-balancer", name, "--instance-port", "80")
    assert again.returncode == 0, again.stderr
    assert f"instance port 80: already on; policies: keep-me, {OURS}\n" in again.stdout
    assert moto.port_policies(name) == {80: ["keep-me", OURS], 443: [OURS]}

    disabled = moto.run("disable", "--load-balancer", name, "--instance-port", "80",
                        "--instance-port", "443")  # fmt: skip
    assert disabled.returncode == 0, disabled.stderr
    assert moto.port_policies(name) == {80: ["keep-me"]}
    assert set(moto.policies(name)) == {"keep-me"}
    assert f"deleted policy {OURS}: no instance port uses it any more\n" in disabled.stdout
    assert moto.run("status", "--load-balancer", name, "--instance-port", "443").returncode == 3


def test_disable_one_port_keeps_the_policy_for_the_other(moto: Moto) -> None:
    name = moto.classic_elb({})
    enabled = moto.run("enable", "--load-balancer", name, "--instance-port", "80",
                       "--instance-port", "443")  # fmt: skip
    assert enabled.returncode == 0, enabled.stderr
    disabled = moto.run("disable", "--load-balancer", name, "--instance-port", "443")
    assert disabled.returncode == 0, disabled.stderr
    assert moto.port_policies(name) == {80: [OURS]}
    assert OURS in moto.policies(name)
    status = moto.run("status", "--load-balancer", name)
    assert status.returncode == 3
    assert f"  instance port 80: PROXY protocol on ({OURS})" in status.stdout
    assert "  instance port 443: PROXY protocol off; policies: (none)" in status.stdout


def test_another_proxy_protocol_policy_is_seen_and_left_alone(moto: Moto) -> None:
    """A policy made by hand (AWS's documented name) turns the header on; disable, which
    removes only ours, says that port still receives it."""
    theirs = ("EnableProxyProtocol", "ProxyProtocolPolicyType", "ProxyProtocol", "True")
    name = moto.classic_elb({80: [KEEP, theirs]})
    status = moto.run("status", "--load-balancer", name, "--instance-port", "80")
    assert status.returncode == 0, status
    assert "PROXY protocol on (EnableProxyProtocol)" in status.stdout
    disabled = moto.run("disable", "--load-balancer", name, "--instance-port", "80")
    assert disabled.returncode == 1
    assert "still sending the PROXY header through policies that are not" in disabled.stderr
    assert "port 80: EnableProxyProtocol" in disabled.stderr
    assert moto.port_policies(name) == {80: ["keep-me", "EnableProxyProtocol"]}


def test_our_name_taken_by_another_policy_type(moto: Moto) -> None:
    name = moto.classic_elb({80: [(OURS, "BackendServerAuthenticationPolicyType", "A", "b")]})
    result = moto.run("enable", "--load-balancer", name, "--instance-port", "443")
    assert result.returncode == 1
    assert f"already has a policy named {OURS} of type BackendServerAuthenticationPolicyType" in (
        result.stderr
    )
    assert moto.port_policies(name) == {80: [OURS]}


def test_nlb_target_group_attribute(moto: Moto) -> None:
    vpc = moto.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    arn = moto.elbv2.create_target_group(
        Name=f"tg-{uuid.uuid4().hex[:8]}", Protocol="TCP", Port=80, VpcId=vpc
    )["TargetGroups"][0]["TargetGroupArn"]

    def attribute() -> str | None:
        answer = moto.elbv2.describe_target_group_attributes(TargetGroupArn=arn)
        values = {item["Key"]: item["Value"] for item in answer["Attributes"]}
        return values.get("proxy_protocol_v2.enabled")

    assert moto.run("status", "--target-group", arn).returncode == 3
    enabled = moto.run("enable", "--target-group", arn)
    assert enabled.returncode == 0, enabled.stderr
    assert attribute() == "true"
    assert enabled.stdout == f"verified: target group {arn} has proxy_protocol_v2.enabled=true\n"
    on = moto.run("status", "--target-group", arn)
    assert (on.returncode, on.stdout) == (0, f"NLB target group {arn}: PROXY protocol v2 on\n")
    assert moto.run("disable", "--target-group", arn).returncode == 0
    assert attribute() == "false"
    assert moto.run("status", "--target-group", arn).returncode == 3


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        (["status", "--load-balancer", "nosuch"], 1, "Error: no Classic ELB named nosuch in "),
        (
            ["enable", "--target-group", "arn:aws:elasticloadbalancing:us-east-1:"
             "123456789012:targetgroup/nosuch/0123456789abcdef"],
            1,
            "Error: no target group arn:aws:elasticloadbalancing:",
        ),
        (["enable", "--load-balancer", "x"], 2, "enable needs --instance-port N"),
        (["status"], 2, "give either --load-balancer NAME or --target-group ARN"),
        (["status", "--load-balancer", "x", "--target-group", "y"], 2, "give either"),
        (["status", "--target-group", "y", "--instance-port", "80"], 2, "is for a Classic ELB"),
    ],
)  # fmt: skip
def test_errors(moto: Moto, arguments: list[str], status: int, message: str) -> None:
    result = moto.run(*arguments)
    assert result.returncode == status, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_instance_port_without_a_listener(moto: Moto) -> None:
    name = moto.classic_elb({})
    result = moto.run("enable", "--load-balancer", name, "--instance-port", "8080")
    assert result.returncode == 1
    assert (
        f"{name} has no listener forwarding to instance port 8080 "
        "(its listeners forward to 80, 443)"
    ) in result.stderr
    assert moto.port_policies(name) == {}
    assert OURS not in moto.policies(name)


def test_missing_credentials(moto: Moto) -> None:
    env = aws_environment(moto.endpoint)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    result = run(["status", "--load-balancer", "web"], env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no AWS credentials found: set AWS_PROFILE")


def test_missing_boto3() -> None:
    result = run(["status", "--load-balancer", "web"], aws_environment(None), WITHOUT_BOTO3)
    assert result.returncode == 1
    assert result.stderr == (
        "Error: the aws commands need boto3: pip install 'proxyproto-mw[aws]'\n"
    )


def test_dry_run_prints_the_aws_cli_commands_and_calls_nothing(tmp_path: Path) -> None:
    """Without boto3 and with an endpoint where nothing listens, --dry-run still prints."""
    env = aws_environment(f"http://127.0.0.1:{free_port()}")
    enable = run(["enable", "--load-balancer", "web", "--instance-port", "80", "--region",
                  "eu-west-1", "--dry-run"], env, WITHOUT_BOTO3)  # fmt: skip
    assert enable.returncode == 0, enable.stderr
    describe = (
        "aws elb describe-load-balancers --load-balancer-names web --query "
        "'LoadBalancerDescriptions[0].BackendServerDescriptions' --region eu-west-1"
    )
    commands = [line for line in enable.stdout.splitlines() if not line.startswith("#")]
    assert commands == [
        describe,
        f"aws elb create-load-balancer-policy --load-balancer-name web --policy-name {OURS} "
        "--policy-type-name ProxyProtocolPolicyType --policy-attributes "
        "AttributeName=ProxyProtocol,AttributeValue=true --region eu-west-1",
        "aws elb set-load-balancer-policies-for-backend-server --load-balancer-name web "
        f"--instance-port 80 --policy-names {OURS} --region eu-west-1",
        describe,
    ]
    assert "It replaces every policy on port 80" in enable.stdout

    disable = run(["disable", "--load-balancer", "web", "--instance-port", "80",
                   "--policy-name", "pp", "--dry-run"], env, WITHOUT_BOTO3)  # fmt: skip
    assert disable.returncode == 0, disable.stderr
    assert (
        "aws elb set-load-balancer-policies-for-backend-server --load-balancer-name web "
        "--instance-port 80 --policy-names '[]'\n"
    ) in disable.stdout
    assert "aws elb delete-load-balancer-policy --load-balancer-name web --policy-name pp\n" in (
        disable.stdout
    )

    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/tg/0123456789abcdef"
    nlb = run(["enable", "--target-group", arn, "--dry-run"], env, WITHOUT_BOTO3)
    assert nlb.returncode == 0, nlb.stderr
    assert nlb.stdout == (
        f"aws elbv2 modify-target-group-attributes --target-group-arn {arn} "
        "--attributes Key=proxy_protocol_v2.enabled,Value=true\n"
        f"aws elbv2 describe-target-group-attributes --target-group-arn {arn}\n"
    )


def test_help() -> None:
    result = run(["enable", "--help"], aws_environment(None))
    assert result.returncode == 0
    for option in ("--load-balancer", "--target-group", "--instance-port", "--dry-run"):
        assert option in result.stdout
