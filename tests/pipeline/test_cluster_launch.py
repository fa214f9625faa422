"""cluster.yaml through Ray's own AWS cluster launcher, against moto's EC2, IAM, STS and ECR.

`ray up` turns the YAML into launch requests in `_bootstrap_config`: prepare_config (defaults,
merged setup commands), the node resources read from describe_instance_types, validate_config
(Ray's schema) and the AWS provider's bootstrap_config (`bootstrap_aws`: instance profile, key
pair, subnets, security groups). This runs that very function on the repository's cluster.yaml,
in an account set up as docs/clusters.md ("AWS set-up") says, with the placeholder ids replaced
as a user replaces them. Then it checks what the old config got wrong and nothing else would
catch before a real cluster sat idle: the head's profile may start workers (the autoscaler runs
there), the workers' may not, the image comes from this account's ECR after a login to that
registry, the nodes share one zone with the placement group and EFA, /dev/shm holds each
node's object store, and every node runs Ray with token auth.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

import boto3
import pytest
import yaml
from ray._private import ray_constants
from ray.autoscaler._private.commands import _bootstrap_config

from conftest import ROOT

AWS_DOCS = ROOT / "docs" / "aws"
# The placeholders cluster.yaml and docs/aws/*.json ship with (docs/clusters.md: replace them).
PLACEHOLDER_ACCOUNT = "123456789012"
PLACEHOLDER_SUBNET = "subnet-0123456789abcdef0"
PLACEHOLDER_GROUP = "sg-0123456789abcdef0"
HEAD_PROFILE, NODE_PROFILE = "lmplatform-head", "lmplatform-node"


def _policy(name: str, account: str) -> str:
    return (AWS_DOCS / name).read_text().replace(PLACEHOLDER_ACCOUNT, account)


def _set_up_account(region: str, zone: str) -> dict:
    """What docs/clusters.md's "AWS set-up" does once per account, in moto. Returns the ids."""
    iam = boto3.client("iam", region_name=region)
    ec2 = boto3.client("ec2", region_name=region)
    account = boto3.client("sts", region_name=region).get_caller_identity()["Account"]
    for role in (HEAD_PROFILE, NODE_PROFILE):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=_policy("trust-ec2.json", account))
        iam.put_role_policy(
            RoleName=role, PolicyName="node", PolicyDocument=_policy("node-policy.json", account)
        )
        iam.create_instance_profile(InstanceProfileName=role)
        iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    iam.put_role_policy(
        RoleName=HEAD_PROFILE,
        PolicyName="launch",
        PolicyDocument=_policy("head-policy.json", account),
    )
    repo = boto3.client("ecr", region_name=region).create_repository(repositoryName="lmplatform")
    # (the placement group too, but moto has no CreatePlacementGroup: checked against the docs)

    # A VPC of the user's with a public subnet in the cluster's zone (Ray refuses subnets that
    # don't map public IPs unless use_internal_ips) and the EFA group that admits itself.
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24", AvailabilityZone=zone)
    subnet = subnet["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    group = ec2.create_security_group(
        GroupName="lmplatform-efa", Description="EFA within the cluster", VpcId=vpc
    )["GroupId"]
    itself = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=itself)
    ec2.authorize_security_group_egress(GroupId=group, IpPermissions=itself)
    return {
        "account": account,
        "subnet": subnet,
        "group": group,
        "repository_uri": repo["repository"]["repositoryUri"],
    }


@pytest.fixture(scope="module")
def launch(s3_server, tmp_path_factory):
    """cluster.yaml bootstrapped by Ray against moto; yields (resolved config, account ids).

    s3_server is moto's full server (every service, on 127.0.0.1, reached through
    AWS_ENDPOINT_URL with fake credentials, both set by conftest), not only S3.
    """
    text = (ROOT / "cluster.yaml").read_text()
    raw = yaml.safe_load(text)
    head = raw["available_node_types"][raw["head_node_type"]]["node_config"]
    # without one, bootstrap_aws makes its own (ray-autoscaler-v1) and attaches AWS managed
    # policies that moto's server does not load: say so here rather than with moto's error
    assert "IamInstanceProfile" in head, "the head node type names no IamInstanceProfile"
    provider = raw["provider"]
    # the set-up's subnet goes in the first zone named: a second one is for the test to refuse
    ids = _set_up_account(provider["region"], provider["availability_zone"].split(",")[0])
    for placeholder, real in [
        (PLACEHOLDER_ACCOUNT, ids["account"]),
        (PLACEHOLDER_SUBNET, ids["subnet"]),
        (PLACEHOLDER_GROUP, ids["group"]),
    ]:
        assert placeholder in text, f"cluster.yaml no longer has the placeholder {placeholder}"
        text = text.replace(placeholder, real)
    with pytest.MonkeyPatch.context() as mp:
        # bootstrap_aws writes the key pair it creates to ~/.ssh: a scratch home, not the user's
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        config = _bootstrap_config(yaml.safe_load(text), no_config_cache=True)
    yield config, ids


# --- IAM, read from the policy documents moto stores (it does not implement
# simulate_principal_policy) --------------------------------------------------------------------


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _profile_name(node_config: dict) -> str:
    profile = node_config.get("IamInstanceProfile")
    assert profile, f"no IamInstanceProfile in {node_config}"
    return profile.get("Name") or profile["Arn"].rsplit("/", 1)[-1]


def _role_of(profile: str, region: str) -> tuple[str, list[dict]]:
    """The ARN of the one role in an instance profile, and its inline policy documents."""
    iam = boto3.client("iam", region_name=region)
    roles = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]
    assert len(roles) == 1, f"instance profile {profile} has {len(roles)} roles"
    name = roles[0]["RoleName"]
    names = iam.list_role_policies(RoleName=name)["PolicyNames"]
    documents = [iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"] for p in names]
    return roles[0]["Arn"], documents


def _allows(documents: list[dict], action: str, resource: str) -> bool:
    """IAM's verdict for identity policies: an explicit Deny wins, then any Allow."""

    def matches(statement: dict) -> bool:
        unsupported = {"NotAction", "NotResource", "Condition"} & statement.keys()
        assert not unsupported, f"the test's policy reader does not evaluate {unsupported}"
        actions = [a.lower() for a in _as_list(statement["Action"])]  # actions ignore case
        return any(fnmatchcase(action.lower(), a) for a in actions) and any(
            fnmatchcase(resource, r) for r in _as_list(statement["Resource"])
        )

    statements = [s for d in documents for s in _as_list(d["Statement"])]
    if any(s["Effect"] == "Deny" and matches(s) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and matches(s) for s in statements)


def _worker_types(config: dict) -> dict:
    return {
        k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]
    }


def test_head_profile_may_start_workers_and_pass_only_their_role(launch):
    config, ids = launch
    region = config["provider"]["region"]
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    # Ray keeps a profile the user names and adds its own (ray-autoscaler-v1, full EC2 and S3)
    # in config["head_node"] only when there is none
    assert _profile_name(head) == HEAD_PROFILE
    assert "IamInstanceProfile" not in config["head_node"]
    head_role, head_policies = _role_of(HEAD_PROFILE, region)
    node_role, _ = _role_of(NODE_PROFILE, region)
    for action in ["ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags"]:
        assert _allows(
            head_policies, action, f"arn:aws:ec2:{region}:{ids['account']}:instance/*"
        ), action
    assert _allows(head_policies, "iam:PassRole", node_role)
    assert not _allows(head_policies, "iam:PassRole", head_role), "the head may pass its own role"


def test_worker_profile_reads_the_bucket_and_the_image_but_launches_nothing(launch):
    config, ids = launch
    region = config["provider"]["region"]
    for name, node_type in _worker_types(config).items():
        assert _profile_name(node_type["node_config"]) == NODE_PROFILE, name
    node_role, policies = _role_of(NODE_PROFILE, region)
    repository = f"arn:aws:ecr:{region}:{ids['account']}:repository/lmplatform"
    assert _allows(policies, "ecr:GetAuthorizationToken", "*")
    for action in [
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchCheckLayerAvailability",
    ]:
        assert _allows(policies, action, repository), action
    assert _allows(policies, "s3:ListBucket", "arn:aws:s3:::my-bucket")
    for action in ["s3:GetObject", "s3:PutObject"]:
        assert _allows(policies, action, "arn:aws:s3:::my-bucket/lmplatform/runs/x"), action
    assert not _allows(policies, "ec2:RunInstances", "*")
    assert not _allows(policies, "iam:PassRole", node_role)


def test_worker_profile_reads_every_s3_path_of_the_cluster_pipeline(launch):
    """Every s3:// path cluster-gpu.yaml and the pretraining config it names read, the nodes may
    read; its output_dir and registry they may also write."""
    config, _ = launch
    pipeline_file = ROOT / "jobs" / "configs" / "pipeline" / "cluster-gpu.yaml"
    pipeline = yaml.safe_load(pipeline_file.read_text())
    texts = [pipeline_file.read_text(), (ROOT / pipeline["pretrain"]["config"]).read_text()]
    # comments too: cluster-gpu.yaml names the upload target of the task data in one
    uris = {u for t in texts for u in re.findall(r"s3://[^\s\"',\]}]+", t)}
    _, policies = _role_of(NODE_PROFILE, config["provider"]["region"])

    def arn(uri: str) -> str:
        return "arn:aws:s3:::" + uri.removeprefix("s3://")

    unreadable = sorted(u for u in uris if not _allows(policies, "s3:GetObject", arn(u)))
    assert not unreadable, f"docs/aws/node-policy.json denies s3:GetObject on {unreadable}"
    for uri in (pipeline["output_dir"], pipeline["registry"]):
        assert _allows(policies, "s3:PutObject", arn(uri) + "/x"), uri


def _images(config: dict) -> set[str]:
    docker = config["docker"]
    found = {docker[k] for k in ("image", "head_image", "worker_image") if k in docker}
    for node_type in _worker_types(config).values():
        found |= {v for k, v in node_type.get("docker", {}).items() if k.endswith("image")}
    return found


def test_image_is_this_accounts_ecr_and_every_node_logs_in_to_it(launch):
    config, ids = launch
    region = config["provider"]["region"]
    (image,) = _images(config)
    repository, _, tag = image.rpartition(":")
    assert repository == ids["repository_uri"] and tag, image
    host = repository.split("/")[0]
    assert host == f"{ids['account']}.dkr.ecr.{region}.amazonaws.com"
    assert config["docker"]["pull_before_run"]
    # a node type's own initialization_commands replace the global ones
    for name, node_type in config["available_node_types"].items():
        commands = node_type.get("initialization_commands", config["initialization_commands"])
        logins = [c for c in commands if "docker login" in c]
        assert len(logins) == 1, f"{name}: {commands}"
        words = logins[0].split()
        assert words[words.index("--password-stdin") + 1] == host, (name, logins[0])
        assert words[words.index("--region") + 1] == region, (name, logins[0])


def test_one_zone_placement_group_and_efa_interfaces_survive_bootstrap(launch):
    config, ids = launch
    region = config["provider"]["region"]
    zone = config["provider"]["availability_zone"]
    assert "," not in zone, "one zone: the p4d nodes must share it and the placement group"
    ec2 = boto3.client("ec2", region_name=region)
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        subnets = ec2.describe_subnets(SubnetIds=sorted(set(node["SubnetIds"])))["Subnets"]
        assert {s["AvailabilityZone"] for s in subnets} == {zone}, name
        offered = ec2.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=[
                {"Name": "location", "Values": [zone]},
                {"Name": "instance-type", "Values": [node["InstanceType"]]},
            ],
        )["InstanceTypeOfferings"]
        assert offered, f"{name}: {node['InstanceType']} is not offered in {zone}"

    p4d = config["available_node_types"]["gpu.8x"]["node_config"]
    # the group the set-up in docs/clusters.md creates, with the cluster strategy
    created = re.findall(
        r"create-placement-group --group-name (\S+) --strategy (\S+)",
        (ROOT / "docs" / "clusters.md").read_text(),
    )
    assert created == [(p4d["Placement"]["GroupName"], "cluster")], created
    interfaces = p4d["NetworkInterfaces"]
    efa = ec2.describe_instance_types(InstanceTypes=[p4d["InstanceType"]])["InstanceTypes"][0]
    assert len(interfaces) == efa["NetworkInfo"]["EfaInfo"]["MaximumEfaInterfaces"]
    assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(len(interfaces)))
    for interface in interfaces:
        assert interface["InterfaceType"] == "efa"
        assert interface["SubnetId"] == ids["subnet"] and interface["Groups"] == [ids["group"]]
    # _configure_from_network_interfaces lifts them to the node config, where Ray checks them
    assert set(p4d["SubnetIds"]) == {ids["subnet"]}
    assert set(p4d["SecurityGroupIds"]) == {ids["group"]}


_DOCKER_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _shm_bytes(options: list[str]) -> int:
    """The size docker gives /dev/shm: the last --shm-size wins, units are powers of 1024."""
    sizes = re.findall(r"--shm-size[= ]'?(\d+)([bkmgt]?)i?b?'?", " ".join(options).lower())
    assert sizes, f"no --shm-size in {options}"
    number, unit = sizes[-1]
    return int(number) * _DOCKER_UNITS[unit]


def test_shm_holds_each_node_types_object_store(launch):
    config, _ = launch
    ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
    for name, node_type in config["available_node_types"].items():
        # as Ray runs the container: the head with the global docker section (ray up), a worker
        # with its node type's docker keys over it (_get_node_specific_docker_config), and
        # run_options followed by head_/worker_run_options
        role = "head" if name == config["head_node_type"] else "worker"
        docker = (
            config["docker"]
            if role == "head"
            else {**config["docker"], **node_type.get("docker", {})}
        )
        shm = _shm_bytes(docker.get("run_options", []) + docker.get(f"{role}_run_options", []))
        kind = node_type["node_config"]["InstanceType"]
        info = ec2.describe_instance_types(InstanceTypes=[kind])["InstanceTypes"][0]
        memory = info["MemoryInfo"]["SizeInMiB"] * 1024**2
        store = min(
            ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION * memory,
            ray_constants.DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES,
        )
        # Ray caps its default object store at 95 % of /dev/shm (resolve_object_store_memory)
        assert 0.95 * shm >= store, f"{name} ({kind}): /dev/shm {shm:,} B < {store / 0.95:,.0f} B"


def test_every_node_starts_ray_with_token_auth(launch):
    config, _ = launch
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        for command in starts:
            before = command[: command.index("ray start")]
            assert re.search(r"(^|\s)RAY_AUTH_MODE=token\s", before), (key, command)
    # where Ray's CLI and every node look for the token (authentication_token_setup)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
